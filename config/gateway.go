package config

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// Lockout bans an address in the firewall after repeated failed logins.
type Lockout struct {
	Failures int      `toml:"failures"`
	Window   Duration `toml:"window"`
	Ban      Duration `toml:"ban"`
}

// Gateway is the authenticating reverse proxy in front of ComfyUI.
type Gateway struct {
	Enabled  bool     `toml:"enabled"`
	Listen   []string `toml:"listen"`
	TLSCert  string   `toml:"tls_cert"`
	TLSKey   string   `toml:"tls_key"`
	Htpasswd string   `toml:"htpasswd"`
	Tokens   string   `toml:"tokens"`
	// Upstream is ComfyUI on loopback; default: container.api_url.
	Upstream string `toml:"upstream"`
	// Admins are identities allowed through block_paths.
	Admins               []string `toml:"admins"`
	MaxConcurrentPrompts int      `toml:"max_concurrent_prompts"`
	PromptsPerMinute     int      `toml:"prompts_per_minute"`
	MaxBody              ByteSize `toml:"max_body"`
	Lockout              Lockout  `toml:"lockout"`
	// LockoutExempt lists sources (addresses/CIDRs) never banned.
	LockoutExempt []string `toml:"lockout_exempt"`
	// BlockPaths are path patterns refused (403) to all but admins.
	BlockPaths []string `toml:"block_paths"`
	// AllowedOrigins may send state-changing requests besides the gateway's own origin.
	AllowedOrigins []string `toml:"allowed_origins"`
	AuditLog       string   `toml:"audit_log"`
	// BcryptConcurrency bounds parallel bcrypt verifications (0 = CPUs).
	BcryptConcurrency int `toml:"bcrypt_concurrency"`
}

func defaultGateway() Gateway {
	return Gateway{
		Enabled:              false,
		Listen:               []string{"0.0.0.0:8080"},
		Htpasswd:             "/etc/zguard/htpasswd",
		Tokens:               "/etc/zguard/tokens",
		MaxConcurrentPrompts: 2,
		PromptsPerMinute:     30,
		MaxBody:              ByteSize(64 << 20),
		Lockout:              Lockout{Failures: 5, Window: Duration(10 * time.Minute), Ban: Duration(time.Hour)},
		// ComfyUI-Manager's install/config routes (legacy and its v2 API);
		// the gateway matches each pattern with and without "/api", and
		// after path normalisation. "/v2/*" as a whole would break ComfyUI's
		// own /v2/userdata, so only Manager's v2 prefixes are listed.
		BlockPaths: []string{
			"/manager/*", "/customnode/*", "/externalmodel/*", "/snapshot/*", "/comfyui_manager/*",
			"/v2/manager/*", "/v2/customnode/*", "/v2/externalmodel/*", "/v2/snapshot/*", "/v2/comfyui_manager/*",
			"/userdata/*ComfyUI-Manager*",
		},
		AuditLog: "/var/log/zguard/audit.jsonl",
	}
}

func (g *Gateway) validate(v *validator, c *Container, f *Firewall) {
	if g.Upstream == "" {
		g.Upstream = c.APIURL
	}
	if !g.Enabled {
		return
	}
	if len(g.Listen) == 0 {
		v.errorf("gateway.listen", "at least one listen address is required")
	}
	for i, l := range g.Listen {
		host, port, err := net.SplitHostPort(l)
		if err != nil {
			v.errorf(fmt.Sprintf("gateway.listen[%d]", i), "invalid listen address %q: %v", l, err)
			continue
		}
		if host != "" && net.ParseIP(host) == nil {
			v.errorf(fmt.Sprintf("gateway.listen[%d]", i), "listen host %q must be an IP address", host)
		}
		for _, p := range c.Ports {
			if fmt.Sprint(p.Host) == port {
				v.errorf(fmt.Sprintf("gateway.listen[%d]", i), "port %s is ComfyUI's own published port", port)
			}
		}
	}
	if (g.TLSCert == "") != (g.TLSKey == "") {
		v.errorf("gateway.tls_cert", "tls_cert and tls_key must be set together")
	}
	for _, k := range []struct{ key, val string }{{"gateway.tls_cert", g.TLSCert}, {"gateway.tls_key", g.TLSKey},
		{"gateway.htpasswd", g.Htpasswd}, {"gateway.tokens", g.Tokens}, {"gateway.audit_log", g.AuditLog}} {
		if k.val != "" && !filepath.IsAbs(k.val) {
			v.errorf(k.key, "must be an absolute path, got %q", k.val)
		}
	}
	if g.Htpasswd == "" && g.Tokens == "" {
		v.errorf("gateway.htpasswd", "the gateway needs htpasswd or tokens (or both)")
	}
	if g.Upstream == "" {
		v.errorf("gateway.upstream", "is required (no container port to derive it from)")
	} else {
		checkURL(v, "gateway.upstream", g.Upstream)
	}
	if g.BcryptConcurrency < 0 {
		v.errorf("gateway.bcrypt_concurrency", "must not be negative (0 = number of CPUs)")
	}
	for i, a := range g.Admins {
		if a == "" || strings.ContainsAny(a, ": \t") {
			v.errorf(fmt.Sprintf("gateway.admins[%d]", i), "invalid identity name %q", a)
		}
	}
	if g.MaxConcurrentPrompts < 0 || g.PromptsPerMinute < 0 {
		v.errorf("gateway.max_concurrent_prompts", "limits must not be negative (0 = unlimited)")
	}
	if g.Lockout.Failures < 0 {
		v.errorf("gateway.lockout", "failures must not be negative (0 = no lockout)")
	}
	if g.Lockout.Failures > 0 && (g.Lockout.Window.D() <= 0 || g.Lockout.Ban.D() <= 0) {
		v.errorf("gateway.lockout", "window and ban must be above zero when failures is set")
	}
	for i, e := range g.LockoutExempt {
		if _, err := ParsePrefix(e); err != nil {
			v.errorf(fmt.Sprintf("gateway.lockout_exempt[%d]", i), "%v", err)
		}
	}
	for i, p := range g.BlockPaths {
		if !strings.HasPrefix(p, "/") {
			v.errorf(fmt.Sprintf("gateway.block_paths[%d]", i), "pattern %q must start with /", p)
		}
	}
	for i, o := range g.AllowedOrigins {
		if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			v.errorf(fmt.Sprintf("gateway.allowed_origins[%d]", i), "origin %q must start with http:// or https://", o)
		}
	}
	if g.TLSCert == "" {
		for _, l := range g.Listen {
			if host, _, err := net.SplitHostPort(l); err == nil {
				if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
					v.warnf("gateway.tls_cert", "listener %s has no TLS: passwords cross the network in clear", l)
					break
				}
			}
		}
	}
	_ = f
}
