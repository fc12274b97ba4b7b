package firewall

import (
	"fmt"
	"time"

	"github.com/zguard/zguard/health"
)

// Status is the firewall part of `zguard status --json`.
type Status struct {
	Enabled bool `json:"enabled"`
	// Backend is "iptables-nft" or "iptables-legacy" (from iptables --version).
	Backend string `json:"backend"`
	// Protected is false when zguard's rules cannot be trusted to filter
	// (mixed legacy/nft tables, Docker's nftables backend) even if installed.
	Protected      bool     `json:"protected"`
	Mixed          string   `json:"mixed,omitempty"`
	DockerNftables bool     `json:"docker_nftables,omitempty"`
	Allow          []string `json:"allow"`
	ProtectedPorts []int    `json:"protected_ports"`
	BlockedPorts   []int    `json:"blocked_ports"`
	// InSync says the last check found (or left) the rules as configured.
	InSync bool `json:"in_sync"`
	// DroppedPackets sums the counters of zguard's drop rules; Drops splits
	// them by rule (block, deny, ban, leak-guard).
	DroppedPackets uint64            `json:"dropped_packets"`
	Drops          map[string]uint64 `json:"drops,omitempty"`
	Banned         []Banned          `json:"banned"`
	IPv6           bool              `json:"ipv6"`
	UsesSets       bool              `json:"uses_sets"`
	LeakGuard      LeakGuard         `json:"leak_guard"`
	// Repairs counts reconciles that found drift (rules changed by someone
	// else) and fixed it; LastDrift says what the last one found.
	Repairs        int       `json:"repairs"`
	LastDrift      *Drift    `json:"last_drift,omitempty"`
	LastApply      time.Time `json:"last_apply,omitzero"`
	LastCheck      time.Time `json:"last_check,omitzero"`
	LastWrites     int       `json:"last_writes"`
	LastDuration   string    `json:"last_duration,omitempty"`
	ConnectionsCut uint      `json:"connections_cut"`
	Error          string    `json:"error,omitempty"`
}

// Banned is one active ban.
type Banned struct {
	Addr  string    `json:"addr"`
	Until time.Time `json:"until"`
}

// LeakGuard describes the raw-table guard against loopback-published ports
// being reached from the network (moby#45610, Docker engines before 28).
type LeakGuard struct {
	Active bool   `json:"active"`
	Engine string `json:"engine"`
	Ports  []int  `json:"ports,omitempty"`
}

// Drift is what a reconcile found changed behind zguard's back.
type Drift struct {
	Time    time.Time `json:"time"`
	Reason  string    `json:"reason"`
	Changes []string  `json:"changes"`
}

// Findings says what is wrong: rules out of sync or a host where zguard's
// rules do not protect are CRITICAL.
func (s Status) Findings() []health.Finding {
	const sub = "firewall"
	if !s.Enabled {
		return nil
	}
	var out []health.Finding
	if s.Error != "" {
		out = append(out, health.Crit(sub, "firewall error: "+s.Error))
	}
	if !s.InSync {
		out = append(out, health.Crit(sub, "firewall rules are not in sync"))
	}
	if s.DockerNftables {
		out = append(out, health.Crit(sub, "not protected: Docker uses its nftables firewall backend, which has no DOCKER-USER chain; published container ports bypass zguard's FORWARD rules (set firewall-backend to iptables in /etc/docker/daemon.json)"))
	}
	if s.Mixed != "" {
		out = append(out, health.Crit(sub, fmt.Sprintf("not protected: %s; zguard writes only %s, so other rules may decide first (make every tool use one backend)", s.Mixed, s.Backend)))
	}
	if s.Enabled && s.Backend == "" && s.Error == "" {
		out = append(out, health.Warn(sub, "iptables backend unknown"))
	}
	return out
}
