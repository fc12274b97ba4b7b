package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// Agent holds settings of the agent process itself.
type Agent struct {
	// Socket is the control socket `zguard status` talks to (mode 0600).
	Socket string `toml:"socket"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
}

func defaultAgent() Agent {
	return Agent{Socket: "/run/zguard/zguard.sock", LogLevel: "info"}
}

func (a *Agent) validate(v *validator) {
	if !filepath.IsAbs(a.Socket) {
		v.errorf("agent.socket", "must be an absolute path, got %q", a.Socket)
	}
	switch a.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		v.errorf("agent.log_level", "must be debug, info, warn or error, got %q", a.LogLevel)
	}
}

// Port publishes one container port on a loopback host address.
type Port struct {
	Container int    `toml:"container"`
	Host      int    `toml:"host"`
	HostIP    string `toml:"host_ip"` // only loopback is accepted; default 127.0.0.1
	Protocol  string `toml:"protocol"`
}

// Backoff configures zguard's own restarts of the container.
type Backoff struct {
	Initial    Duration `toml:"initial"`
	Max        Duration `toml:"max"`
	ResetAfter Duration `toml:"reset_after"` // uptime after which the delay starts over
}

// CrashLoop says when repeated restarts count as a crash loop.
type CrashLoop struct {
	Restarts int      `toml:"restarts"`
	Window   Duration `toml:"window"`
}

// Container is the ComfyUI container zguard supervises.
type Container struct {
	Name       string            `toml:"name"`
	Image      string            `toml:"image"`
	Pull       string            `toml:"pull"` // always | missing | never
	GPUs       GPUSelection      `toml:"gpus"`
	Ports      []Port            `toml:"ports"`
	Command    []string          `toml:"command"`
	Entrypoint []string          `toml:"entrypoint"`
	User       string            `toml:"user"`
	Volumes    []string          `toml:"volumes"`
	Env        map[string]string `toml:"env"`
	Memory     ByteSize          `toml:"memory"`
	ShmSize    ByteSize          `toml:"shm_size"`
	PidsLimit  int64             `toml:"pids_limit"`
	Network    string            `toml:"network"`

	HealthURL     string   `toml:"health_url"`
	HealthTimeout Duration `toml:"health_timeout"`
	// APIURL is where zguard reaches ComfyUI's HTTP API (interrupt, queue);
	// default: 127.0.0.1 on the host port that publishes container port 8188
	// (or the first port).
	APIURL string `toml:"api_url"`

	UpdateInterval    Duration  `toml:"update_interval"`
	PruneOldImages    bool      `toml:"prune_old_images"`
	ReconcileInterval Duration  `toml:"reconcile_interval"`
	StopTimeout       Duration  `toml:"stop_timeout"`
	StopOnExit        bool      `toml:"stop_on_exit"`
	Restart           Backoff   `toml:"restart"`
	CrashLoop         CrashLoop `toml:"crash_loop"`
}

func defaultContainer() Container {
	return Container{
		Name:              "zimage-comfyui",
		Pull:              "missing",
		GPUs:              GPUSelection{All: true},
		Network:           "bridge",
		HealthTimeout:     Duration(120 * time.Second),
		UpdateInterval:    Duration(6 * time.Hour),
		ReconcileInterval: Duration(30 * time.Second),
		StopTimeout:       Duration(30 * time.Second),
		Restart: Backoff{
			Initial:    Duration(time.Second),
			Max:        Duration(5 * time.Minute),
			ResetAfter: Duration(10 * time.Minute),
		},
		CrashLoop: CrashLoop{Restarts: 5, Window: Duration(10 * time.Minute)},
	}
}

var containerNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)
var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (c *Container) validate(v *validator) {
	if !containerNameRE.MatchString(c.Name) {
		v.errorf("container.name", "invalid container name %q (letters, digits, _ . -; must start with a letter or digit)", c.Name)
	}
	if c.Image == "" {
		v.errorf("container.image", "is required")
	} else if _, err := reference.ParseNormalizedNamed(c.Image); err != nil {
		v.errorf("container.image", "invalid image reference %q: %v", c.Image, err)
	}
	switch c.Pull {
	case "always", "missing", "never":
	default:
		v.errorf("container.pull", "must be always, missing or never, got %q", c.Pull)
	}
	seenHost := map[string]bool{}
	for i, p := range c.Ports {
		key := fmt.Sprintf("container.ports[%d]", i)
		if p.Container < 1 || p.Container > 65535 {
			v.errorf(key+".container", "port %d out of range 1-65535", p.Container)
		}
		if p.Host == 0 && p.Container >= 1 {
			c.Ports[i].Host = p.Container
			p.Host = p.Container
		}
		if p.Host < 1 || p.Host > 65535 {
			v.errorf(key+".host", "port %d out of range 1-65535", p.Host)
		}
		switch p.Protocol {
		case "":
			c.Ports[i].Protocol = "tcp"
		case "tcp", "udp":
		default:
			v.errorf(key+".protocol", "must be tcp or udp, got %q", p.Protocol)
		}
		if p.HostIP == "" {
			c.Ports[i].HostIP = "127.0.0.1"
		} else if ip := net.ParseIP(p.HostIP); ip == nil || !ip.IsLoopback() {
			v.errorf(key+".host_ip", "host_ip %q is not a loopback address: zguard publishes container ports on loopback only "+
				"(127.0.0.1 or ::1); expose ComfyUI through [gateway] instead", p.HostIP)
		}
		hk := fmt.Sprintf("%s/%d/%s", c.Ports[i].HostIP, p.Host, c.Ports[i].Protocol)
		if seenHost[hk] {
			v.errorf(key+".host", "host port %d is published twice", p.Host)
		}
		seenHost[hk] = true
	}
	for i, vol := range c.Volumes {
		if err := checkVolume(vol); err != nil {
			v.errorf(fmt.Sprintf("container.volumes[%d]", i), "%v", err)
		}
	}
	for k := range c.Env {
		if !envKeyRE.MatchString(k) {
			v.errorf("container.env."+k, "invalid environment variable name %q", k)
		}
	}
	if c.Memory != 0 && c.Memory < 6*1024*1024 {
		v.errorf("container.memory", "memory limit %d bytes is below Docker's minimum of 6MiB", c.Memory)
	}
	if c.PidsLimit < 0 {
		v.errorf("container.pids_limit", "must not be negative")
	}
	switch c.Network {
	case "bridge", "host", "none":
		if c.Network == "host" && len(c.Ports) > 0 {
			v.errorf("container.network", "network \"host\" bypasses port publishing: every port the container opens is on all host addresses; use bridge")
		}
	default:
		if !containerNameRE.MatchString(c.Network) {
			v.errorf("container.network", "invalid network name %q", c.Network)
		}
	}
	if c.HealthURL == "" && len(c.Ports) > 0 {
		c.HealthURL = "http://" + net.JoinHostPort(c.Ports[c.comfyPortIndex()].HostIP, strconv.Itoa(c.Ports[c.comfyPortIndex()].Host)) + "/system_stats"
	}
	if c.HealthURL != "" {
		checkURL(v, "container.health_url", c.HealthURL)
	}
	if c.APIURL == "" && len(c.Ports) > 0 {
		p := c.Ports[c.comfyPortIndex()]
		c.APIURL = "http://" + net.JoinHostPort(p.HostIP, strconv.Itoa(p.Host))
	}
	if c.APIURL != "" {
		checkURL(v, "container.api_url", c.APIURL)
	}
	if c.HealthTimeout.D() <= 0 {
		v.errorf("container.health_timeout", "must be above zero")
	}
	if c.ReconcileInterval.D() < time.Second {
		v.errorf("container.reconcile_interval", "must be at least 1s")
	}
	if c.UpdateInterval != 0 && c.UpdateInterval.D() < time.Second {
		v.errorf("container.update_interval", "must be \"0\" (off) or at least 1s")
	}
	if c.Restart.Initial.D() <= 0 {
		v.errorf("container.restart.initial", "must be above zero")
	}
	if c.Restart.Max.D() < c.Restart.Initial.D() {
		v.errorf("container.restart.max", "must be at least restart.initial (%s)", c.Restart.Initial.D())
	}
	if c.CrashLoop.Restarts < 1 {
		v.errorf("container.crash_loop.restarts", "must be at least 1")
	}
	if c.CrashLoop.Window.D() <= 0 {
		v.errorf("container.crash_loop.window", "must be above zero")
	}
}

// comfyPortIndex picks the port that serves ComfyUI: container port 8188 if
// published, else the first one.
func (c *Container) comfyPortIndex() int {
	for i, p := range c.Ports {
		if p.Container == 8188 {
			return i
		}
	}
	return 0
}

// PinnedByDigest reports whether the image is referenced by digest
// (repo@sha256:...), which zguard never "updates".
func (c *Container) PinnedByDigest() bool {
	ref, err := reference.ParseNormalizedNamed(c.Image)
	if err != nil {
		return false
	}
	_, ok := ref.(reference.Canonical)
	return ok
}

func checkURL(v *validator, key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.errorf(key, "invalid URL %q (want http://host:port/path)", raw)
	}
}

// Volume is one parsed bind mount.
type Volume struct {
	Host, Container string
	ReadOnly        bool
}

// ParseVolume splits "host:container[:ro|rw]".
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Volume{}, fmt.Errorf("invalid volume %q (want \"/host/path:/container/path[:ro]\")", s)
	}
	vol := Volume{Host: parts[0], Container: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			vol.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("invalid volume option %q in %q (want ro or rw)", parts[2], s)
		}
	}
	if !filepath.IsAbs(vol.Host) {
		return Volume{}, fmt.Errorf("volume host path %q must be absolute (named volumes are not supported)", vol.Host)
	}
	if !filepath.IsAbs(vol.Container) {
		return Volume{}, fmt.Errorf("volume container path %q must be absolute", vol.Container)
	}
	return vol, nil
}

func checkVolume(s string) error {
	_, err := ParseVolume(s)
	return err
}
