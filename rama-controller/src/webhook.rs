//! Admission webhooks over TLS, served by every replica (admission must not wait for
//! a leader):
//!
//! - `POST /validate` — Networks and Subnets on create, update and delete, by the
//!   rules in [`rama_api::validate`], against the cluster as the API server has it now
//!   (live reads, not caches: two Subnets created at once are still refused if they
//!   overlap, as long as they are not created in the same instant). Fails closed.
//! - `POST /mutate` — Pods on create: a pod of an Underlay network gets the network's
//!   `nodeSelector`; a pod that only says `network-type: Underlay` must land on a node
//!   of some Underlay network (a required node affinity on
//!   [`crate::UNDERLAY_NETWORK_LABEL`]). A `nodeSelector` that contradicts the
//!   network's is refused; a network or subnet that does not exist (yet) is admitted
//!   with a warning (the controller's Event follows) — manifests applied in any order
//!   still converge. Fails open (`failurePolicy: Ignore`): a controller outage must
//!   not stop every pod in the cluster from being created.
//! - `GET /healthz`.
//!
//! On start the webhook configurations are applied with the CA that signs the serving
//! certificate (see [`crate::certs`]).
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
            ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
        },
        core::v1::{Namespace, Pod},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use log::{info, warn};
use rama_api::{GROUP, IPInstance, Network, NetworkType, Subnet, annotations as ann, validate};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    Error, Result, UNDERLAY_NETWORK_LABEL,
    certs::{self, CertSource},
    kube_err, refused,
};

/// Largest admission request body read (the API server's own limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// How the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `https://<the address the webhook listens on>` (a host-network controller, tests).
    Listen,
    /// A Service in front of the controller pods.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub endpoint: Endpoint,
    /// Name of both webhook configurations.
    pub config_name: String,
    pub certs: CertSource,
    pub field_manager: String,
}

/// A bound, registered webhook server.
pub struct Webhook {
    listener: TcpListener,
    tls: TlsAcceptor,
    handler: Arc<Handler>,
}

struct Handler {
    client: Client,
}

fn tls_names(settings: &WebhookSettings, bound: SocketAddr) -> Vec<String> {
    match &settings.endpoint {
        Endpoint::Listen => vec![bound.ip().to_string()],
        Endpoint::Service {
            namespace, name, ..
        } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ],
    }
}

impl Webhook {
    /// Binds, loads (or creates) the certificate and applies the webhook
    /// configurations with its CA.
    pub async fn start(client: Client, settings: &WebhookSettings) -> Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Io {
                path: settings.listen.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Io {
            path: settings.listen.to_string(),
            source,
        })?;
        let cert = certs::load(&settings.certs, &client, &tls_names(settings, bound)).await?;
        let tls = TlsAcceptor::from(certs::server_config(&cert)?);
        register(&client, settings, bound, &cert.ca_pem).await?;
        info!("webhook listening on {bound}");
        Ok(Self {
            listener,
            tls,
            handler: Arc::new(Handler { client }),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("webhook accept: {e}");
                        continue;
                    }
                },
            };
            let tls = self.tls.clone();
            let handler = self.handler.clone();
            tokio::spawn(async move {
                let stream = match tls.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("webhook TLS handshake with {peer}: {e}");
                        return;
                    }
                };
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.route(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    warn!("webhook connection from {peer}: {e}");
                }
            });
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let kind = if json {
        "application/json"
    } else {
        "text/plain"
    };
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, kind.parse().expect("static"));
    r
}

fn typed<T: DeserializeOwned>(object: Option<&DynamicObject>) -> Result<Option<T>> {
    object
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
        .transpose()
        .map_err(|e| refused("object", format!("cannot be read: {e}")))
}

impl Handler {
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => return reply(StatusCode::OK, "ok", false),
            (&Method::POST, "/validate" | "/mutate") => {}
            _ => return reply(StatusCode::NOT_FOUND, "not found", false),
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("body: {e}"), false),
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    format!("not an AdmissionReview: {e}"),
                    false,
                );
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}"), false),
        };
        let response = if path == "/validate" {
            self.validate(&request).await
        } else {
            self.mutate(&request).await
        };
        match serde_json::to_vec(&response.into_review()) {
            Ok(json) => reply(StatusCode::OK, json, true),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
        }
    }

    async fn list<K>(&self, what: &str) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        Ok(Api::<K>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing {what}")))?
            .items)
    }

    async fn validate(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(req);
        match self.check(req).await {
            Ok(()) => response,
            Err(e) => {
                info!(
                    "refused {:?} of {} {:?}: {e}",
                    req.operation, req.kind.kind, req.name
                );
                response.deny(format!("{} {:?}: {e}", req.kind.kind, req.name))
            }
        }
    }

    async fn check(&self, req: &AdmissionRequest<DynamicObject>) -> Result<()> {
        match (req.kind.kind.as_str(), &req.operation) {
            ("Network", Operation::Create | Operation::Update) => {
                let new: Network =
                    typed(req.object.as_ref())?.ok_or_else(|| refused("object", "is missing"))?;
                let old: Option<Network> = typed(req.old_object.as_ref())?;
                Ok(validate::network(&new, old.as_ref())?)
            }
            ("Subnet", Operation::Create | Operation::Update) => {
                let new: Subnet =
                    typed(req.object.as_ref())?.ok_or_else(|| refused("object", "is missing"))?;
                let old: Option<Subnet> = typed(req.old_object.as_ref())?;
                let networks = self.list::<Network>("Networks").await?;
                let subnets = self.list::<Subnet>("Subnets").await?;
                Ok(validate::subnet(&new, old.as_ref(), &networks, &subnets)?)
            }
            ("Subnet", Operation::Delete) => {
                let instances = self.list::<IPInstance>("IPInstances").await?;
                Ok(validate::subnet_delete(&req.name, &instances)?)
            }
            ("Network", Operation::Delete) => {
                let subnets = self.list::<Subnet>("Subnets").await?;
                let instances = self.list::<IPInstance>("IPInstances").await?;
                Ok(validate::network_delete(&req.name, &subnets, &instances)?)
            }
            _ => Ok(()),
        }
    }

    async fn mutate(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(req);
        if req.kind.kind != "Pod" || !matches!(req.operation, Operation::Create) {
            return response;
        }
        match self.pod_patch(req).await {
            Ok(PodAdmission::Unchanged) => response,
            Ok(PodAdmission::Warn(warning)) => {
                let mut r = response;
                r.warnings = Some(vec![warning]);
                r
            }
            Ok(PodAdmission::Patch(ops)) => {
                match serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
                    .map_err(|e| e.to_string())
                    .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()))
                {
                    Ok(r) => r,
                    Err(e) => response.deny(format!("building the patch: {e}")),
                }
            }
            Err(e @ Error::Refused { .. }) => response.deny(format!("Pod {:?}: {e}", req.name)),
            Err(e) => {
                // Cannot tell the pod's network: admit it unchanged (fail open, as the
                // configuration says) and say so.
                warn!("pod {:?}: {e}", req.name);
                let mut r = response;
                r.warnings = Some(vec![format!(
                    "rama: could not look up the pod's network: {e}"
                )]);
                r
            }
        }
    }

    /// The JSON patch operations that put an Underlay pod on its network's nodes.
    async fn pod_patch(&self, req: &AdmissionRequest<DynamicObject>) -> Result<PodAdmission> {
        let pod: Pod =
            typed(req.object.as_ref())?.ok_or_else(|| refused("object", "is missing"))?;
        let ns = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let namespace = Api::<Namespace>::all(self.client.clone())
            .get_opt(&ns)
            .await
            .map_err(kube_err(format!("reading Namespace {ns}")))?;
        let empty = BTreeMap::new();
        let pod_ann = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let ns_ann = namespace
            .as_ref()
            .and_then(|n| n.metadata.annotations.as_ref())
            .unwrap_or(&empty);
        let get = |k: &str| pod_ann.get(k).or_else(|| ns_ann.get(k)).cloned();

        let mut network = get(ann::SPECIFIED_NETWORK);
        if network.is_none()
            && let Some(subnets) = get(ann::SPECIFIED_SUBNET)
            && let Some(first) = subnets
                .split([',', '/'])
                .map(str::trim)
                .find(|s| !s.is_empty())
        {
            let Some(subnet) = Api::<Subnet>::all(self.client.clone())
                .get_opt(first)
                .await
                .map_err(kube_err(format!("reading Subnet {first}")))?
            else {
                return Ok(PodAdmission::Warn(format!(
                    "rama: Subnet {first:?} ({}) does not exist (yet): the pod gets no address until it does",
                    ann::SPECIFIED_SUBNET
                )));
            };
            network = Some(subnet.spec.network);
        }
        let spec = pod.spec.clone().unwrap_or_default();
        if let Some(name) = network {
            let Some(net) = Api::<Network>::all(self.client.clone())
                .get_opt(&name)
                .await
                .map_err(kube_err(format!("reading Network {name}")))?
            else {
                return Ok(PodAdmission::Warn(format!(
                    "rama: Network {name:?} does not exist (yet): the pod gets no address until it does"
                )));
            };
            if net.spec.network_type != NetworkType::Underlay || net.spec.node_selector.is_empty() {
                return Ok(PodAdmission::Unchanged);
            }
            let mut selector = spec.node_selector.clone().unwrap_or_default();
            for (k, v) in &net.spec.node_selector {
                match selector.get(k) {
                    Some(mine) if mine != v => {
                        return Err(refused(
                            "spec.nodeSelector",
                            format!(
                                "{k}={mine} contradicts Network {name:?}, whose nodes have {k}={v}"
                            ),
                        ));
                    }
                    _ => {
                        selector.insert(k.clone(), v.clone());
                    }
                }
            }
            if Some(&selector) == spec.node_selector.as_ref() {
                return Ok(PodAdmission::Unchanged);
            }
            return Ok(PodAdmission::Patch(vec![serde_json::json!({
                "op": "add", "path": "/spec/nodeSelector", "value": selector,
            })]));
        }
        let underlay = get(ann::NETWORK_TYPE).is_some_and(|t| t.eq_ignore_ascii_case("underlay"));
        if !underlay {
            return Ok(PodAdmission::Unchanged);
        }
        let expression = serde_json::json!({"key": UNDERLAY_NETWORK_LABEL, "operator": "Exists"});
        let mut affinity = serde_json::to_value(&spec.affinity).unwrap_or_default();
        let required =
            &mut affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        match required["nodeSelectorTerms"].as_array_mut() {
            Some(terms) if !terms.is_empty() => {
                // Terms are ORed: each must now also ask for an Underlay node.
                for term in terms {
                    match term["matchExpressions"].as_array_mut() {
                        Some(list) => list.push(expression.clone()),
                        None => term["matchExpressions"] = serde_json::json!([expression]),
                    }
                }
            }
            _ => {
                required["nodeSelectorTerms"] =
                    serde_json::json!([{"matchExpressions": [expression]}]);
            }
        }
        Ok(PodAdmission::Patch(vec![serde_json::json!({
            "op": "add", "path": "/spec/affinity", "value": affinity,
        })]))
    }
}

/// What the mutating webhook does with a pod.
enum PodAdmission {
    Unchanged,
    /// JSON patch operations.
    Patch(Vec<serde_json::Value>),
    /// Admitted unchanged, with a warning for the client (kubectl prints it).
    Warn(String),
}

fn client_config(
    settings: &WebhookSettings,
    bound: SocketAddr,
    path: &str,
    ca: &str,
) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(ca.as_bytes().to_vec()));
    match &settings.endpoint {
        Endpoint::Listen => WebhookClientConfig {
            url: Some(format!("https://{bound}{path}")),
            ca_bundle,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.into()),
                port: Some(*port),
            }),
        },
    }
}

fn rule(group: &str, resources: &[&str], operations: &[&str], scope: &str) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(operations.iter().map(|s| (*s).into()).collect()),
        resources: Some(resources.iter().map(|s| (*s).into()).collect()),
        scope: Some(scope.into()),
    }
}

/// Applies both webhook configurations (server-side apply), carrying the CA.
async fn register(
    client: &Client,
    settings: &WebhookSettings,
    bound: SocketAddr,
    ca: &str,
) -> Result<()> {
    let name = &settings.config_name;
    let apply = PatchParams::apply(&settings.field_manager).force();
    let validating = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: format!("validate.{GROUP}"),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(settings, bound, "/validate", ca),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            rules: Some(vec![rule(
                GROUP,
                &["networks", "subnets"],
                &["CREATE", "UPDATE", "DELETE"],
                "Cluster",
            )]),
            ..Default::default()
        }]),
    };
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(name, &apply, &Patch::Apply(&validating))
        .await
        .map_err(kube_err(format!(
            "applying ValidatingWebhookConfiguration {name}"
        )))?;
    let mutating = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: format!("mutate.{GROUP}"),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(settings, bound, "/mutate", ca),
            failure_policy: Some("Ignore".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            rules: Some(vec![rule("", &["pods"], &["CREATE"], "Namespaced")]),
            ..Default::default()
        }]),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(name, &apply, &Patch::Apply(&mutating))
        .await
        .map_err(kube_err(format!(
            "applying MutatingWebhookConfiguration {name}"
        )))?;
    Ok(())
}

/// Deletes both webhook configurations (uninstall, tests).
pub async fn unregister(client: &Client, name: &str) -> Result<()> {
    let dp = DeleteParams::default();
    for result in [
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(name, &dp)
            .await
            .map(|_| ()),
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(name, &dp)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(kube_err(format!("deleting webhook configuration {name}"))(
                    e,
                ));
            }
        }
    }
    Ok(())
}
