package supervisor

import (
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/zguard/zguard/config"
)

func testContainer(t *testing.T) config.Container {
	t.Helper()
	cfg, err := config.Parse("t.toml", []byte(`
[container]
name = "zg"
image = "zguard-fakecomfy:test"
gpus = [0, 1]
ports = [{ container = 8188, host = 18188 }, { container = 8888, host = 18888, host_ip = "::1" }]
volumes = ["/tmp/out:/root/ComfyUI/output", "/tmp/models:/models:ro"]
env = { TZ = "UTC", B = "2" }
memory = "8GiB"
pids_limit = 100
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Container
}

func TestBuildSpecPublishesOnLoopbackOnly(t *testing.T) {
	c := testContainer(t)
	s, err := buildSpec(c, "sha256:abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	for port, bs := range s.Host.PortBindings {
		for _, b := range bs {
			if b.HostIP != "127.0.0.1" && b.HostIP != "::1" {
				t.Errorf("%s bound on %q", port, b.HostIP)
			}
		}
	}
	if got := s.Host.PortBindings["8188/tcp"][0]; got.HostIP != "127.0.0.1" || got.HostPort != "18188" {
		t.Errorf("8188 binding = %+v", got)
	}
	if s.Host.RestartPolicy.Name != container.RestartPolicyDisabled {
		t.Errorf("restart policy %q; zguard restarts the container itself", s.Host.RestartPolicy.Name)
	}
	if len(s.Host.SecurityOpt) != 1 || s.Host.SecurityOpt[0] != "no-new-privileges:true" {
		t.Errorf("security opts = %v", s.Host.SecurityOpt)
	}
	if s.Config.Labels[LabelManaged] != "true" || s.Config.Labels[LabelSpec] == "" {
		t.Errorf("labels = %v", s.Config.Labels)
	}
	dr := s.Host.DeviceRequests
	if len(dr) != 1 || dr[0].Driver != "nvidia" || strings.Join(dr[0].DeviceIDs, ",") != "0,1" {
		t.Errorf("device requests = %+v", dr)
	}
	if s.Host.Memory != 8<<30 || *s.Host.PidsLimit != 100 {
		t.Errorf("limits: memory %d pids %d", s.Host.Memory, *s.Host.PidsLimit)
	}
	if strings.Join(s.Config.Env, ",") != "B=2,TZ=UTC" {
		t.Errorf("env = %v", s.Config.Env)
	}
	c.Ports[0].HostIP = "0.0.0.0" // bypassing validation must still fail
	if _, err := buildSpec(c, "x", nil); err == nil {
		t.Fatal("buildSpec accepted a public host address")
	}
}

func TestGPUSelections(t *testing.T) {
	c := testContainer(t)
	c.GPUs = config.GPUSelection{All: true}
	s, _ := buildSpec(c, "x", nil)
	if dr := s.Host.DeviceRequests; len(dr) != 1 || dr[0].Count != -1 || dr[0].Capabilities[0][0] != "gpu" {
		t.Errorf("all: %+v", dr)
	}
	c.GPUs = config.GPUSelection{None: true}
	s, _ = buildSpec(c, "x", nil)
	if len(s.Host.DeviceRequests) != 0 {
		t.Errorf("none: %+v", s.Host.DeviceRequests)
	}
}

func TestSpecHashIgnoresBehaviourSettings(t *testing.T) {
	a := testContainer(t)
	b := a
	b.UpdateInterval = 0
	b.Restart.Max = config.Duration(1)
	if specHash(a) != specHash(b) {
		t.Error("behaviour settings changed the spec hash")
	}
	b.Env = map[string]string{"TZ": "UTC", "B": "3"}
	if specHash(a) == specHash(b) {
		t.Error("env change did not change the spec hash")
	}
}

func inspectFrom(c config.Container, mutate func(*container.InspectResponse)) container.InspectResponse {
	s, _ := buildSpec(c, "sha256:abc", nil)
	ins := container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: "abc", HostConfig: s.Host,
			State: &container.State{Running: true},
		},
		Config: s.Config,
		NetworkSettings: &container.NetworkSettings{
			NetworkSettingsBase: container.NetworkSettingsBase{Ports: s.Host.PortBindings},
			Networks:            map[string]*network.EndpointSettings{"bridge": {}},
		},
	}
	if mutate != nil {
		mutate(&ins)
	}
	return ins
}

func TestDrift(t *testing.T) {
	c := testContainer(t)
	cases := map[string]struct {
		mutate func(*container.InspectResponse)
		want   string // "" = in sync
	}{
		"in sync": {nil, ""},
		"published on all addresses by hand": {func(i *container.InspectResponse) {
			pm := nat.PortMap{"8188/tcp": {{HostIP: "0.0.0.0", HostPort: "18188"}}, "8888/tcp": {{HostIP: "::1", HostPort: "18888"}}}
			i.HostConfig.PortBindings = pm
			i.NetworkSettings.Ports = pm
		}, "not loopback"},
		"empty host ip means all addresses": {func(i *container.InspectResponse) {
			i.NetworkSettings.Ports = nat.PortMap{"8188/tcp": {{HostIP: "", HostPort: "18188"}}, "8888/tcp": {{HostIP: "::1", HostPort: "18888"}}}
		}, "0.0.0.0:18188"},
		"disconnected from its network": {func(i *container.InspectResponse) {
			i.NetworkSettings.Networks = map[string]*network.EndpointSettings{}
		}, "not connected"},
		"stale spec":            {func(i *container.InspectResponse) { i.Config.Labels[LabelSpec] = "old" }, "spec hash"},
		"docker restart policy": {func(i *container.InspectResponse) { i.HostConfig.RestartPolicy.Name = "always" }, "restart policy"},
		"port missing": {func(i *container.InspectResponse) {
			delete(i.HostConfig.PortBindings, "8888/tcp")
		}, "8888/tcp not published"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := strings.Join(drift(c, inspectFrom(c, tc.mutate)), "; ")
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("drift = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecodePullStream(t *testing.T) {
	ok := `{"status":"Pulling from x"}` + "\n" + `{"status":"Digest: sha256:1"}`
	if err := decodePullStream(strings.NewReader(ok)); err != nil {
		t.Fatal(err)
	}
	bad := `{"status":"Pulling"}` + "\n" + `{"errorDetail":{"message":"unauthorized"},"error":"unauthorized: auth required"}`
	if err := decodePullStream(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("error inside the stream not reported: %v", err)
	}
	if err := decodePullStream(strings.NewReader(`{"status":`)); err == nil {
		t.Fatal("truncated stream accepted")
	}
}

func TestExplainStartError(t *testing.T) {
	c := testContainer(t)
	err := explainStartError(c, errString(`Error response from daemon: could not select device driver "nvidia" with capabilities: [[gpu]]`))
	if !strings.Contains(err.Error(), "install nvidia-container-toolkit") || !strings.Contains(err.Error(), "restart dockerd") {
		t.Fatalf("message = %v", err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
