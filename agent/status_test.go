package agent

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zguard/zguard/health"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sampleStatus() Status {
	part := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	return Status{
		Version: "1.2.3",
		Overall: health.Critical,
		Findings: []health.Finding{
			health.Crit("container", "container is crashloop"),
			health.Warn("config", "last reload failed, previous config in force: x.toml:3: unknown key"),
		},
		Config: ConfigStatus{Path: "/etc/zguard/config.toml", LastReloadError: "x.toml:3: unknown key"},
		Parts: map[string]json.RawMessage{
			"container": part(map[string]any{
				"name": "zimage-comfyui", "id": "0123456789abcdef0123", "image": "zimage:latest",
				"state": "crashloop", "health": "none", "restarts": 7,
				"ports":       []map[string]any{{"container": 8188, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 8188}},
				"last_update": map[string]any{"result": "rolled_back", "error": "new container is unhealthy"},
			}),
			"firewall": part(map[string]any{"enabled": true, "backend": "iptables-nft", "in_sync": true,
				"allow": []string{"10.8.0.0/16"}, "last_apply": time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}),
			"gpu": part(map[string]any{"enabled": true, "available": false, "reason": "no NVML"}),
		},
	}
}

// TestHumanStatusGolden pins the `zguard status` summary; regenerate with
// go test ./agent -run Golden -update.
func TestHumanStatusGolden(t *testing.T) {
	var b bytes.Buffer
	st := sampleStatus()
	st.Config.LoadedAt = time.Time{}
	WriteHuman(&b, st)
	golden := filepath.Join("testdata", "status.txt")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("summary differs from %s:\n%s", golden, b.String())
	}
}

func TestStatusJSONRoundTrip(t *testing.T) {
	st := sampleStatus()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "config", "container", "firewall", "gpu", "overall", "findings"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status JSON has no %q", k)
		}
	}
	if m["overall"] != "CRITICAL" {
		t.Errorf("overall = %v", m["overall"])
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Overall != health.Critical || len(back.Findings) != 2 || len(back.Parts) != 3 || back.Config.LastReloadError == "" {
		t.Fatalf("round trip lost data: %+v", back)
	}
}
