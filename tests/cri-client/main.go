// rama-cri-client drives a container runtime's CRI endpoint the way kubelet does for
// a pod's network: RunPodSandbox (the runtime runs CNI ADD), PodSandboxStatus (the
// address kubelet reports), StopPodSandbox and RemovePodSandbox (each runs CNI DEL).
// The Rama tests use it against containerd's CRI plugin. Built in GOPATH mode against
// the cri-api and grpc vendored in Debian's kubernetes source package (see
// xtask/src/clients.rs).
//
//	rama-cri-client SOCKET run NAME NAMESPACE UID   → JSON {"id","ip","netns"}
//	rama-cri-client SOCKET stop ID
//	rama-cri-client SOCKET remove ID
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "rama-cri-client: "+format+"\n", args...)
	os.Exit(1)
}

// netnsOf digs the sandbox's network namespace path out of the runtime's verbose
// status: containerd puts the OCI runtime spec of the sandbox under "info".
func netnsOf(info map[string]string) string {
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info["info"]), &v); err != nil {
		return ""
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	return ""
}

func main() {
	if len(os.Args) < 4 {
		fail("usage: rama-cri-client SOCKET run NAME NAMESPACE UID | stop ID | remove ID")
	}
	socket, verb := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fail("connecting to %s: %v", socket, err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	switch verb {
	case "run":
		if len(os.Args) != 6 {
			fail("usage: rama-cri-client SOCKET run NAME NAMESPACE UID")
		}
		name, namespace, uid := os.Args[3], os.Args[4], os.Args[5]
		config := &cri.PodSandboxConfig{
			Metadata: &cri.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: uid},
			Hostname: name,
			Labels:   map[string]string{"rama.test/pod": name},
			Linux:    &cri.LinuxPodSandboxConfig{},
		}
		started := time.Now()
		sb, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: config})
		if err != nil {
			fail("RunPodSandbox %s: %v", name, err)
		}
		took := time.Since(started)
		st, err := rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: sb.PodSandboxId, Verbose: true})
		if err != nil {
			fail("PodSandboxStatus %s: %v", sb.PodSandboxId, err)
		}
		ip := ""
		if st.Status.Network != nil {
			ip = st.Status.Network.Ip
		}
		out, _ := json.Marshal(map[string]interface{}{
			"id": sb.PodSandboxId, "ip": ip, "netns": netnsOf(st.Info), "ms": took.Milliseconds(),
		})
		fmt.Println(string(out))
	case "stop":
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: os.Args[3]}); err != nil {
			fail("StopPodSandbox %s: %v", os.Args[3], err)
		}
	case "remove":
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: os.Args[3]}); err != nil {
			fail("RemovePodSandbox %s: %v", os.Args[3], err)
		}
	default:
		fail("unknown verb %q (run, stop, remove)", verb)
	}
}
