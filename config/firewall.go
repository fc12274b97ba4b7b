package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Firewall is the IP allowlist zguard keeps in iptables/ip6tables.
type Firewall struct {
	Enabled bool `toml:"enabled"`
	// Allow lists sources (addresses or CIDRs, IPv4 and IPv6) that may reach
	// ProtectPorts. Loopback is always allowed.
	Allow []string `toml:"allow"`
	// ProtectPorts are host ports reachable only from Allow.
	ProtectPorts []int `toml:"protect_ports"`
	// BlockPorts are host ports never reachable from outside the host.
	BlockPorts []int `toml:"block_ports"`
	// IPv6 is "auto" (when the host has IPv6), "on" or "off".
	IPv6 string `toml:"ipv6"`
	// SetThreshold: allowlists longer than this use an ipset instead of one
	// rule per entry.
	SetThreshold int `toml:"set_threshold"`
	// ReconcileInterval is how often rules are checked and repaired.
	ReconcileInterval Duration `toml:"reconcile_interval"`
	// ChainPrefix names zguard's chains and sets (PREFIX-INPUT, ...).
	ChainPrefix string `toml:"chain_prefix"`

	// Prefixes is Allow parsed (not a TOML key).
	Prefixes []netip.Prefix `toml:"-"`
}

func defaultFirewall() Firewall {
	return Firewall{
		Enabled:           true,
		IPv6:              "auto",
		SetThreshold:      32,
		ReconcileInterval: Duration(10 * time.Second),
		ChainPrefix:       "ZGUARD",
	}
}

// ParseAllowlist parses addresses and CIDRs; a bare address is a /32 or
// /128. Host bits set in a CIDR are an error, since they usually mean a typo.
func ParseAllowlist(entries []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(entries))
	seen := map[netip.Prefix]bool{}
	for _, e := range entries {
		p, err := ParsePrefix(e)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// ParsePrefix parses one allowlist entry.
func ParsePrefix(e string) (netip.Prefix, error) {
	s := strings.TrimSpace(e)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty address")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %v", e, err)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: zones are not allowed", e)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits set (did you mean %s?)", e, p.Masked())
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: IPv4-mapped IPv6 prefixes are not allowed; write the IPv4 form", e)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid address %q", e)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid address %q: zones are not allowed", e)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (f *Firewall) validate(v *validator, c *Container) {
	for i, e := range f.Allow {
		p, err := ParsePrefix(e)
		if err != nil {
			v.errorf(fmt.Sprintf("firewall.allow[%d]", i), "%v", err)
			continue
		}
		if p.Bits() == 0 {
			v.errorf(fmt.Sprintf("firewall.allow[%d]", i), "%q allows the whole internet; remove the firewall section instead if that is meant", e)
		}
	}
	if ps, err := ParseAllowlist(f.Allow); err == nil {
		f.Prefixes = ps
	}
	seen := map[int]string{}
	for i, p := range f.ProtectPorts {
		if p < 1 || p > 65535 {
			v.errorf(fmt.Sprintf("firewall.protect_ports[%d]", i), "port %d out of range 1-65535", p)
		}
		seen[p] = "protect_ports"
	}
	for i, p := range f.BlockPorts {
		if p < 1 || p > 65535 {
			v.errorf(fmt.Sprintf("firewall.block_ports[%d]", i), "port %d out of range 1-65535", p)
		}
		if seen[p] == "protect_ports" {
			v.errorf(fmt.Sprintf("firewall.block_ports[%d]", i), "port %d is in both protect_ports and block_ports", p)
		}
	}
	switch f.IPv6 {
	case "auto", "on", "off":
	default:
		v.errorf("firewall.ipv6", "must be auto, on or off, got %q", f.IPv6)
	}
	if f.SetThreshold < 0 {
		v.errorf("firewall.set_threshold", "must not be negative")
	}
	if f.ReconcileInterval.D() < 100*time.Millisecond {
		v.errorf("firewall.reconcile_interval", "must be at least 100ms")
	}
	if l := len(f.ChainPrefix); l == 0 || l > 20 || strings.ContainsAny(f.ChainPrefix, " \t!/\"'") {
		v.errorf("firewall.chain_prefix", "must be 1-20 characters without spaces or quotes, got %q", f.ChainPrefix)
	}
	if !f.Enabled {
		return
	}
	if len(f.ProtectPorts) > 0 && len(f.Allow) == 0 {
		v.warnf("firewall.allow", "allow is empty: nobody outside this host can reach protect_ports %v (loopback still can); list addresses or CIDRs in firewall.allow to let clients in", f.ProtectPorts)
	}
	if len(f.ProtectPorts) == 0 && len(f.BlockPorts) == 0 {
		v.warnf("firewall", "neither protect_ports nor block_ports is set: the firewall installs its chains but filters nothing")
	}
	// An entry inside another one is harmless but usually a leftover.
	// Checking each prefix length present keeps this fast for big lists.
	have := map[netip.Prefix]bool{}
	lengths := map[int]bool{}
	for _, p := range f.Prefixes {
		have[p] = true
		lengths[p.Bits()] = true
	}
	for i, p := range f.Prefixes {
		for b := range lengths {
			if b >= p.Bits() {
				continue
			}
			if q, err := p.Addr().Prefix(b); err == nil && have[q] {
				v.warnf(fmt.Sprintf("firewall.allow[%d]", i), "%s is already covered by %s", p, q)
				break
			}
		}
	}
	// Every published ComfyUI port should be blocked; warn when one is not.
	for _, p := range c.Ports {
		blocked := false
		for _, b := range f.BlockPorts {
			if b == p.Host {
				blocked = true
			}
		}
		if !blocked {
			v.warnf("firewall.block_ports", "published container port %d (host) is not in block_ports", p.Host)
		}
	}
}
