package firewall

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/health"
)

// environment is what zguard learned about the host's netfilter setup.
type environment struct {
	backend    string // "iptables-nft", "iptables-legacy" or "" (unknown)
	ipv6       bool   // ip6tables works here
	mixed      string // non-empty: rules live in both legacy and nft tables
	dockerNft  bool   // Docker's nftables firewall backend (no DOCKER-USER)
	detectErrs []string
}

// detect inspects the host: which iptables backend is in use, whether IPv6
// tables are usable, whether rules also sit in the other backend's tables
// (mixed legacy/nft: some tool, often an old Docker, writes to the other
// one, and what zguard installs may not be what filters packets), and
// whether Docker runs its nftables backend.
func detect(ctx context.Context, cmd commander) environment {
	var env environment
	out, err := cmd.run(ctx, nil, "iptables", "--version")
	if err != nil {
		env.detectErrs = append(env.detectErrs, err.Error())
	}
	env.backend = parseBackend(string(out))
	if _, err := cmd.run(ctx, nil, "ip6tables-save", "-t", "filter"); err == nil {
		env.ipv6 = true
	}
	other := "iptables-legacy-save"
	if env.backend == "iptables-legacy" {
		other = "iptables-nft-save"
	}
	if out, err := cmd.run(ctx, nil, other); err == nil && hasRules(out) {
		env.mixed = "rules exist in both " + env.backend + " and " + strings.TrimSuffix(other, "-save") + " tables"
	}
	if out, err := cmd.run(ctx, nil, "nft", "list", "tables"); err == nil {
		env.dockerNft = parseDockerNft(string(out))
	}
	return env
}

// parseBackend reads `iptables --version` ("iptables v1.8.9 (nf_tables)").
func parseBackend(version string) string {
	switch {
	case strings.Contains(version, "nf_tables"):
		return "iptables-nft"
	case strings.Contains(version, "legacy"):
		return "iptables-legacy"
	case strings.HasPrefix(version, "iptables v"):
		// iptables before 1.8 only had the legacy backend.
		return "iptables-legacy"
	}
	return ""
}

// hasRules reports whether iptables-save output holds any rule or user chain.
func hasRules(save []byte) bool {
	ts, err := parseSave(save)
	if err != nil {
		return false
	}
	for _, t := range ts {
		for ch, rules := range t.chains {
			if len(rules) > 0 || t.policies[ch] == "-" {
				return true
			}
		}
	}
	return false
}

// parseDockerNft reports whether `nft list tables` shows the tables of
// Docker's nftables firewall backend (Docker 29+, firewall-backend=nftables).
func parseDockerNft(tables string) bool {
	for line := range strings.Lines(tables) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" && f[2] == "docker-bridges" {
			return true
		}
	}
	return false
}

// needsLeakGuard reports whether the Docker engine version is older than 28,
// the release that added its own raw PREROUTING drops for loopback-published
// ports (moby#45610). An unknown version gets the guard: it costs nothing
// when the leak is already closed.
func needsLeakGuard(version string) bool {
	v := strings.TrimPrefix(strings.TrimSpace(version), "v")
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return true
	}
	return n < 28
}

// Preflight inspects this host for what would stop the section from
// protecting anything, without changing a rule: Docker's nftables
// backend, rules split between legacy and nf_tables, missing tools.
// `zguard check` can print these next to the config warnings.
func Preflight(ctx context.Context, cfg config.Firewall) []health.Finding {
	return preflight(ctx, execCommander{}, cfg)
}

func preflight(ctx context.Context, cmd commander, cfg config.Firewall) []health.Finding {
	if !cfg.Enabled {
		return nil
	}
	env := detect(ctx, cmd)
	st := Status{Enabled: true, InSync: true, Backend: env.backend, Mixed: env.mixed, DockerNftables: env.dockerNft}
	out := st.Findings()
	if env.backend == "" {
		out = append(out, health.Crit("firewall", "iptables is not usable here: "+strings.Join(env.detectErrs, "; ")))
	}
	if cfg.IPv6 == "on" && !env.ipv6 {
		out = append(out, health.Crit("firewall", `ipv6 = "on" but ip6tables is not usable on this host`))
	}
	if allow, err := config.ParseAllowlist(cfg.Allow); err == nil && useSet(len(allow), cfg.SetThreshold) {
		if _, err := cmd.run(ctx, nil, "ipset", "list", "-n"); err != nil {
			out = append(out, health.Crit("firewall", fmt.Sprintf("the allowlist has %d entries (over set_threshold %d) but ipset is not usable: %v", len(allow), cfg.SetThreshold, err)))
		}
	}
	return out
}
