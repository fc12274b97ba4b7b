package config

import (
	"strings"
	"testing"
)

func TestFirewallWarnings(t *testing.T) {
	cases := map[string]struct {
		section string
		want    string // "" = no firewall warning
	}{
		"empty allow with protected ports": {"protect_ports = [8080]\nblock_ports = [8188]\n", "nobody outside this host can reach protect_ports [8080] (loopback still can)"},
		"nothing to filter":                {"allow = [\"192.0.2.1\"]\n", "filters nothing"},
		"covered entry":                    {"allow = [\"10.0.0.0/8\", \"10.1.2.3\"]\nprotect_ports = [8080]\n", "10.1.2.3/32 is already covered by 10.0.0.0/8"},
		"disabled section is quiet":        {"enabled = false\nprotect_ports = [8080]\n", ""},
		"clean":                            {"allow = [\"192.0.2.1\", \"2001:db8::/48\"]\nprotect_ports = [8080]\n", ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			cfg, err := Parse("w.toml", []byte(minimal+"[firewall]\n"+c.section))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range cfg.Warnings {
				if strings.HasPrefix(w.Key, "firewall") && w.Key != "firewall.block_ports" {
					got = append(got, w.String())
				}
			}
			if c.want == "" {
				if len(got) > 0 {
					t.Errorf("unexpected warnings: %q", got)
				}
				return
			}
			if !strings.Contains(strings.Join(got, "\n"), c.want) {
				t.Errorf("warnings %q, want one containing %q", got, c.want)
			}
		})
	}
}

func TestFirewallChainPrefix(t *testing.T) {
	for name, prefix := range map[string]string{"quote": `Z"G`, "space": "Z G", "too long": strings.Repeat("Z", 21), "empty": ""} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("p.toml", []byte(minimal+"[firewall]\nchain_prefix = '"+prefix+"'\n"))
			if err == nil || !strings.Contains(err.Error(), "chain_prefix") {
				t.Errorf("prefix %q: err = %v", prefix, err)
			}
		})
	}
}
