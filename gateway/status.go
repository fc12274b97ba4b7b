package gateway

import (
	"fmt"
	"net"
	"strings"

	"github.com/zguard/zguard/health"
)

const subsystem = "gateway"

// Findings says what an operator should fix: passwords crossing the
// network in clear, credential files that are missing or failed to reload,
// nobody able to log in, a dead listener, bans the firewall did not take.
func (s Status) Findings() []health.Finding {
	if !s.Enabled {
		return nil
	}
	var out []health.Finding
	if !s.TLS {
		var clear []string
		for _, l := range s.Listen {
			host, _, err := net.SplitHostPort(l)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				clear = append(clear, l)
			}
		}
		if len(clear) > 0 {
			out = append(out, health.Warn(subsystem, fmt.Sprintf("no TLS on %s: passwords and tokens cross the network in clear (set tls_cert/tls_key)", strings.Join(clear, ", "))))
		}
	}
	if s.CredentialError != "" {
		out = append(out, health.Warn(subsystem, "credential reload failed, the previous files stay in force: "+s.CredentialError))
	}
	if len(s.MissingFiles) > 0 {
		out = append(out, health.Warn(subsystem, "credential file missing: "+strings.Join(s.MissingFiles, ", ")+" (create with `zguard passwd` / `zguard token`)"))
	}
	if s.Identities == 0 {
		out = append(out, health.Crit(subsystem, "no users or tokens loaded: the gateway refuses everyone"))
	}
	if s.ServeError != "" {
		out = append(out, health.Crit(subsystem, s.ServeError))
	}
	if s.AuditError != "" {
		out = append(out, health.Warn(subsystem, "audit log: "+s.AuditError))
	}
	for _, b := range s.Banned {
		if b.Error != "" {
			out = append(out, health.Warn(subsystem, fmt.Sprintf("ban of %s not applied in the firewall (refused in the gateway only): %s", b.Addr, b.Error)))
		}
	}
	return out
}
