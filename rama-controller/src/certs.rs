//! The webhook's serving certificate. Never built into the code: either files an
//! operator (or cert-manager) mounts, or a Secret the controller keeps — created with
//! a fresh CA and serving certificate the first time any replica starts, read by every
//! replica after that, so all replicas serve one certificate and agree on the CA the
//! webhook configurations carry.
use std::{path::PathBuf, sync::Arc};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, api::PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{Error, Result, kube_err};

/// PEM texts of the serving certificate, its key and the CA the API server trusts.
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files (a mounted `kubernetes.io/tls` Secret); the CA defaults to the
    /// certificate itself.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    /// A Secret (`tls.crt`, `tls.key`, `ca.crt`) the controller creates when missing.
    Secret { namespace: String, name: String },
}

fn tls(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// A new CA and a serving certificate it signs for `names` (DNS names or IPs).
pub fn generate(names: &[String]) -> Result<ServingCert> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().map_err(tls("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls("CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "rama-webhook-ca");
    let ca_cert = ca.self_signed(&ca_key).map_err(tls("CA certificate"))?;
    let issuer = Issuer::new(ca, &ca_key);

    let key = KeyPair::generate().map_err(tls("serving key"))?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(tls("serving names"))?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "rama-webhook".into()),
    );
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(tls("serving certificate"))?;
    Ok(ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    })
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn secret_text(secret: &Secret, key: &str) -> Result<String> {
    let name = secret.metadata.name.as_deref().unwrap_or("");
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Error::Tls(format!("Secret {name} has no {key}")))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| Error::Tls(format!("Secret {name}: {key} is not PEM text")))
}

/// The certificate from its source; for a Secret, created (for `names`) when missing.
pub async fn load(source: &CertSource, client: &Client, names: &[String]) -> Result<ServingCert> {
    match source {
        CertSource::Files { cert, key, ca } => {
            let cert_pem = read(cert)?;
            Ok(ServingCert {
                key_pem: read(key)?,
                ca_pem: match ca {
                    Some(ca) => read(ca)?,
                    None => cert_pem.clone(),
                },
                cert_pem,
            })
        }
        CertSource::Secret { namespace, name } => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            for _ in 0..2 {
                if let Some(secret) = api
                    .get_opt(name)
                    .await
                    .map_err(kube_err(format!("reading Secret {namespace}/{name}")))?
                {
                    return Ok(ServingCert {
                        cert_pem: secret_text(&secret, "tls.crt")?,
                        key_pem: secret_text(&secret, "tls.key")?,
                        ca_pem: secret_text(&secret, "ca.crt")?,
                    });
                }
                let fresh = generate(names)?;
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(
                        [
                            ("tls.crt", &fresh.cert_pem),
                            ("tls.key", &fresh.key_pem),
                            ("ca.crt", &fresh.ca_pem),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                        .collect(),
                    ),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => return Ok(fresh),
                    // Another replica created it first: read theirs.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => {
                        return Err(kube_err(format!("creating Secret {namespace}/{name}"))(e));
                    }
                }
            }
            Err(Error::Tls(format!(
                "Secret {namespace}/{name} kept appearing and vanishing"
            )))
        }
    }
}

/// The TLS server configuration for a certificate.
pub fn server_config(cert: &ServingCert) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Tls(
            "serving certificate: no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("serving certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_make_a_server_config() {
        let cert = generate(&["127.0.0.1".into(), "rama-webhook.kube-system.svc".into()])
            .expect("generate");
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(
            cert.ca_pem, cert.cert_pem,
            "the CA signs a separate certificate"
        );
        server_config(&cert).expect("server config");
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused() {
        let mut cert = generate(&["127.0.0.1".into()]).expect("generate");
        cert.key_pem = "not a key".into();
        let err = server_config(&cert).expect_err("refused");
        assert!(err.to_string().contains("serving key"), "{err}");
    }
}
