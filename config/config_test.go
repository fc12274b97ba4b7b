package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
[container]
image = "zguard-fakecomfy:test"
ports = [{ container = 8188, host = 8188 }]
`

func TestShippedConfigLoads(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.toml"))
	if err != nil {
		t.Fatalf("shipped config.toml does not load:\n%v", err)
	}
	if cfg.Container.Image != "registry.gitcode.com/aistudent/zimage-comfyui:latest" {
		t.Errorf("image = %q", cfg.Container.Image)
	}
	if !cfg.Container.GPUs.All || cfg.Output.Path != "/root/output" {
		t.Errorf("gpus = %v, output = %q", cfg.Container.GPUs, cfg.Output.Path)
	}
	for _, p := range cfg.Container.Ports {
		if p.HostIP != "127.0.0.1" {
			t.Errorf("port %d host_ip = %q", p.Container, p.HostIP)
		}
	}
	if cfg.Container.HealthURL != "http://127.0.0.1:8188/system_stats" || cfg.Container.APIURL != "http://127.0.0.1:8188" {
		t.Errorf("health_url = %q api_url = %q", cfg.Container.HealthURL, cfg.Container.APIURL)
	}
	if cfg.Gateway.Upstream != "http://127.0.0.1:8188" {
		t.Errorf("gateway upstream = %q", cfg.Gateway.Upstream)
	}
}

func TestDefaultsApplied(t *testing.T) {
	cfg, err := Parse("min.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Container.Name != "zimage-comfyui" || cfg.Container.Pull != "missing" || cfg.Container.HealthTimeout.D() != 120*time.Second {
		t.Errorf("container defaults not applied: %+v", cfg.Container)
	}
	if cfg.GPU.SoftLimit.Percent != 90 || cfg.GPU.HardLimit.Percent != 97 || cfg.GPU.PollInterval.D() != 250*time.Millisecond {
		t.Errorf("gpu defaults not applied: %+v", cfg.GPU)
	}
	if cfg.Output.DirMode != 0o700 || cfg.Output.FileMode != 0o600 {
		t.Errorf("output modes: %o %o", cfg.Output.DirMode, cfg.Output.FileMode)
	}
}

// TestBadInputIsLocated covers the kinds of mistakes operators make; each
// must name the line (or at least the key) and never load.
func TestBadInputIsLocated(t *testing.T) {
	cases := map[string]struct {
		text string
		want string // substring of the message, including the location
	}{
		"syntax error":          {"[container]\nimage = \"x\nname = \"y\"\n", "bad.toml:2:"},
		"unknown key":           {minimal + "colour = \"blue\"\n", "bad.toml:5: container.colour: unknown key"},
		"unknown section":       {minimal + "[gpus]\nenabled = true\n", "bad.toml:5: gpus: unknown key"},
		"port zero":             {"[container]\nimage = \"x\"\nports = [{ container = 0 }]\n", "bad.toml:3: container.ports[0].container: port 0 out of range"},
		"port too high":         {"[container]\nimage = \"x\"\nports = [{ container = 8188, host = 70000 }]\n", "bad.toml:3: container.ports[0].host: port 70000 out of range"},
		"public host_ip":        {"[container]\nimage = \"x\"\nports = [{ container = 8188, host_ip = \"0.0.0.0\" }]\n", "bad.toml:3: container.ports[0].host_ip: host_ip \"0.0.0.0\" is not a loopback address"},
		"bad duration":          {minimal + "health_timeout = \"ten seconds\"\n", "bad.toml:5"},
		"bad cidr":              {minimal + "[firewall]\nallow = [\"10.0.0.0/33\"]\n", "bad.toml:6: firewall.allow[0]: invalid CIDR"},
		"host bits set":         {minimal + "[firewall]\nallow = [\"10.0.0.1/8\"]\n", "did you mean 10.0.0.0/8"},
		"bad image":             {"[container]\nimage = \"UPPER/Case:tag\"\n", "bad.toml:2: container.image: invalid image reference"},
		"relative volume":       {minimal + "volumes = [\"output:/root/ComfyUI/output\"]\n", "bad.toml:5: container.volumes[0]: volume host path \"output\" must be absolute"},
		"bad pull":              {minimal + "pull = \"sometimes\"\n", "bad.toml:5: container.pull: must be always, missing or never"},
		"missing container":     {"[gpu]\nenabled = false\n", "the [container] section is required"},
		"bad mode":              {minimal + "[output]\ndir_mode = \"0999\"\n", "bad.toml:6"},
		"soft above hard":       {minimal + "[gpu]\nsoft_limit = \"98%\"\n", "bad.toml:6: gpu.soft_limit: soft_limit (98%) must be below hard_limit (97%)"},
		"relative output path":  {minimal + "[output]\npath = \"output\"\n", "bad.toml:6: output.path: must be an absolute path"},
		"system output path":    {minimal + "[output]\npath = \"/etc\"\n", "is a system folder"},
		"wrong type":            {"[container]\nimage = 5\n", "bad.toml:2"},
		"host network":          {minimal + "network = \"host\"\n", "container.network"},
		"duplicate host port":   {"[container]\nimage = \"x\"\nports = [{ container = 8188, host = 9000 }, { container = 8888, host = 9000 }]\n", "published twice"},
		"gateway on comfy port": {minimal + "[gateway]\nenabled = true\nlisten = [\"0.0.0.0:8188\"]\n", "ComfyUI's own published port"},
		"bad gpu selection":     {minimal + "gpus = \"some\"\n", "bad.toml:5"},
		"negative size":         {minimal + "memory = \"-1GiB\"\n", "bad.toml:5"},
		"tls half configured":   {minimal + "[gateway]\nenabled = true\ntls_cert = \"/etc/zguard/tls.crt\"\n", "tls_cert and tls_key must be set together"},
		"bad log level":         {"[agent]\nlog_level = \"loud\"\n" + minimal, "bad.toml:2: agent.log_level"},
		"port in protect+block": {minimal + "[firewall]\nprotect_ports = [8080]\nblock_ports = [8080]\n", "in both protect_ports and block_ports"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("bad.toml", []byte(tc.text))
			if err == nil {
				t.Fatalf("loaded; want an error containing %q", tc.want)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error is %T, want *config.Error: %v", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	cfg, err := Parse("w.toml", []byte(minimal+"[firewall]\nprotect_ports = [8080]\nblock_ports = [8188]\n"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, w := range cfg.Warnings {
		if strings.Contains(w.String(), "nobody outside this host can reach") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no empty-allowlist warning in %v", cfg.Warnings)
	}
}

func TestTypes(t *testing.T) {
	var l Limit
	if err := l.UnmarshalText([]byte("70GiB")); err != nil || l.Bytes != 70<<30 || l.Of(141<<30) != 70<<30 {
		t.Errorf("70GiB: %+v %v", l, err)
	}
	if err := l.UnmarshalText([]byte("90%")); err != nil || l.Of(1000) != 900 {
		t.Errorf("90%%: %+v %v", l, err)
	}
	for _, bad := range []string{"0%", "101%", "abc", "0", "-5GiB"} {
		if err := l.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("limit %q accepted", bad)
		}
	}
	var m Mode
	if err := m.UnmarshalText([]byte("0750")); err != nil || m != 0o750 {
		t.Errorf("mode: %o %v", m, err)
	}
	if err := m.UnmarshalText([]byte("4755")); err == nil {
		t.Errorf("setuid mode accepted")
	}
	p, err := ParsePrefix("2001:db8::1")
	if err != nil || p.Bits() != 128 {
		t.Errorf("v6 address: %v %v", p, err)
	}
	p, err = ParsePrefix("::ffff:192.0.2.1")
	if err != nil || !p.Addr().Is4() {
		t.Errorf("mapped address not unmapped: %v %v", p, err)
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := os.ReadFile(filepath.Join("..", "config.toml"))
	f.Add(seed)
	f.Add([]byte(minimal))
	f.Add([]byte("[container]\nimage=\"x\"\nports=[{container=1,host_ip=\"::1\"}]\n[firewall]\nallow=[\"2001:db8::/32\"]\n"))
	f.Add([]byte("[container]\nimage=\"x\"\ngpus=[0,1]\n[gpu]\nsoft_limit=\"1GiB\"\nhard_limit=\"2GiB\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error without problems: %T %v", err, err)
			}
			return
		}
		// Whatever loads must publish on loopback only.
		for _, p := range cfg.Container.Ports {
			if ip := net.ParseIP(p.HostIP); ip == nil || !ip.IsLoopback() {
				t.Fatalf("non-loopback host_ip %q loaded", p.HostIP)
			}
			if p.Host < 1 || p.Host > 65535 || p.Container < 1 || p.Container > 65535 {
				t.Fatalf("port out of range loaded: %+v", p)
			}
		}
		if cfg.Container.Image == "" {
			t.Fatal("empty image loaded")
		}
	})
}
