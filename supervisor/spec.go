package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"github.com/zguard/zguard/config"
)

// Labels zguard puts on what it owns. Nothing without LabelManaged is ever
// touched.
const (
	LabelManaged = "zguard.managed" // "true"
	LabelSpec    = "zguard.spec"    // hash of the container section
	LabelName    = "zguard.name"    // the configured container name
	LabelImage   = "zguard.image"   // the configured image reference
	// LabelReplaces marks a container created by an update; its value is
	// the ID of the container it replaces (kept as <name>-zguard-old until
	// the new one is healthy).
	LabelReplaces = "zguard.replaces"
)

// oldSuffix names the previous container while an update is gated on health.
const oldSuffix = "-zguard-old"

// specHash is a stable digest of everything that decides how the container
// is created. Settings that only affect zguard's behaviour (backoff, update
// interval) are left out so changing them never recreates the container.
func specHash(c config.Container) string {
	env := make([]string, 0, len(c.Env))
	for k, v := range c.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	doc := struct {
		Image      string
		GPUs       string
		Ports      []config.Port
		Command    []string
		Entrypoint []string
		User       string
		Volumes    []string
		Env        []string
		Memory     int64
		Shm        int64
		Pids       int64
		Network    string
	}{c.Image, c.GPUs.String(), c.Ports, c.Command, c.Entrypoint, c.User, c.Volumes, env,
		int64(c.Memory), int64(c.ShmSize), c.PidsLimit, c.Network}
	b, _ := json.Marshal(doc)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// createSpec is what ContainerCreate gets.
type createSpec struct {
	Config *container.Config
	Host   *container.HostConfig
}

// buildSpec turns the container section into Docker's create request.
// image is what to run (an image ID when zguard pins the accepted image,
// otherwise the configured reference). Every port is bound to loopback;
// config validation already refused anything else, and this is checked
// again here so no code path can publish ComfyUI on a public address.
func buildSpec(c config.Container, image string, extraLabels map[string]string) (createSpec, error) {
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, p := range c.Ports {
		ip := net.ParseIP(p.HostIP)
		if ip == nil || !ip.IsLoopback() {
			return createSpec{}, fmt.Errorf("refusing to publish port %d on %q: only loopback is allowed", p.Container, p.HostIP)
		}
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port, err := nat.NewPort(proto, strconv.Itoa(p.Container))
		if err != nil {
			return createSpec{}, fmt.Errorf("building port %d: %w", p.Container, err)
		}
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], nat.PortBinding{HostIP: p.HostIP, HostPort: strconv.Itoa(p.Host)})
	}
	env := make([]string, 0, len(c.Env))
	for k, v := range c.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	labels := map[string]string{
		LabelManaged: "true",
		LabelSpec:    specHash(c),
		LabelName:    c.Name,
		LabelImage:   c.Image,
	}
	for k, v := range extraLabels {
		labels[k] = v
	}
	cfg := &container.Config{
		Image:        image,
		Env:          env,
		User:         c.User,
		Labels:       labels,
		ExposedPorts: exposed,
	}
	if len(c.Command) > 0 {
		cfg.Cmd = c.Command
	}
	if len(c.Entrypoint) > 0 {
		cfg.Entrypoint = c.Entrypoint
	}
	hc := &container.HostConfig{
		PortBindings: bindings,
		Binds:        append([]string(nil), c.Volumes...),
		// zguard restarts the container itself (with backoff and crash-loop
		// detection); a Docker restart policy would fight it.
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		SecurityOpt:   []string{"no-new-privileges:true"},
		NetworkMode:   container.NetworkMode(c.Network),
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": "50m", "max-file": "3",
		}},
	}
	hc.Memory = int64(c.Memory)
	if c.PidsLimit > 0 {
		n := c.PidsLimit
		hc.PidsLimit = &n
	}
	hc.ShmSize = int64(c.ShmSize)
	switch {
	case c.GPUs.All:
		hc.DeviceRequests = []container.DeviceRequest{{Driver: "nvidia", Count: -1, Capabilities: [][]string{{"gpu"}}}}
	case len(c.GPUs.Indices) > 0:
		ids := make([]string, len(c.GPUs.Indices))
		for i, n := range c.GPUs.Indices {
			ids[i] = strconv.Itoa(n)
		}
		hc.DeviceRequests = []container.DeviceRequest{{Driver: "nvidia", DeviceIDs: ids, Capabilities: [][]string{{"gpu"}}}}
	}
	return createSpec{Config: cfg, Host: hc}, nil
}

// drift lists the ways a running container differs from the spec that
// matter for safety or correctness; empty means in sync. It reads the
// container's live state, not just its labels, so a container recreated by
// hand under zguard's label with public ports is caught.
func drift(c config.Container, ins container.InspectResponse) []string {
	var out []string
	if ins.Config == nil || ins.HostConfig == nil {
		return []string{"container has no config"}
	}
	if ins.Config.Labels[LabelSpec] != specHash(c) {
		out = append(out, "spec hash differs from the config")
	}
	want := map[string]string{}
	for _, p := range c.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		want[fmt.Sprintf("%d/%s", p.Container, proto)] = net.JoinHostPort(p.HostIP, strconv.Itoa(p.Host))
	}
	check := func(where string, pm nat.PortMap) {
		got := map[string]string{}
		for port, bs := range pm {
			for _, b := range bs {
				ip := net.ParseIP(b.HostIP)
				if b.HostIP == "" || ip == nil || !ip.IsLoopback() {
					hip := b.HostIP
					if hip == "" {
						hip = "0.0.0.0"
					}
					out = append(out, fmt.Sprintf("%s: port %s published on %s (not loopback)", where, port, net.JoinHostPort(hip, b.HostPort)))
				}
				got[string(port)] = net.JoinHostPort(b.HostIP, b.HostPort)
			}
		}
		for port, addr := range want {
			if g, ok := got[port]; !ok {
				out = append(out, fmt.Sprintf("%s: port %s not published", where, port))
			} else if g != addr && !strings.HasPrefix(g, "0.0.0.0") {
				out = append(out, fmt.Sprintf("%s: port %s published on %s, want %s", where, port, g, addr))
			}
		}
	}
	check("host config", ins.HostConfig.PortBindings)
	if ins.State != nil && ins.State.Running && ins.NetworkSettings != nil {
		check("live", ins.NetworkSettings.Ports)
		if c.Network != "" && c.Network != "none" && c.Network != "host" {
			if _, ok := ins.NetworkSettings.Networks[c.Network]; !ok {
				out = append(out, fmt.Sprintf("not connected to network %q", c.Network))
			}
		}
	}
	if ins.HostConfig.RestartPolicy.Name != "" && ins.HostConfig.RestartPolicy.Name != container.RestartPolicyDisabled {
		out = append(out, fmt.Sprintf("docker restart policy %q set", ins.HostConfig.RestartPolicy.Name))
	}
	if ins.HostConfig.Privileged {
		out = append(out, "container is privileged")
	}
	return dedupe(out)
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := in[:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
