package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/zguard/zguard/health"
	"github.com/zguard/zguard/supervisor"
)

// ConfigStatus is the config part of `zguard status --json`.
type ConfigStatus struct {
	Path            string            `json:"path"`
	LoadedAt        time.Time         `json:"loaded_at"`
	LastReloadAt    time.Time         `json:"last_reload_at,omitzero"`
	LastReloadError string            `json:"last_reload_error"`
	Warnings        []string          `json:"warnings,omitempty"`
	ApplyErrors     map[string]string `json:"apply_errors,omitempty"`
}

// Status is the whole `zguard status --json` document. Subsystem parts are
// kept as raw JSON here so the CLI can print any agent's answer; the agent
// fills them from each subsystem's typed Status.
type Status struct {
	Version  string                     `json:"version"`
	Overall  health.Level               `json:"overall"`
	Findings []health.Finding           `json:"findings"`
	Config   ConfigStatus               `json:"config"`
	Parts    map[string]json.RawMessage `json:"-"`
}

// MarshalJSON writes the fixed fields and each subsystem under its name.
func (s Status) MarshalJSON() ([]byte, error) {
	m := map[string]any{
		"version":  s.Version,
		"overall":  s.Overall,
		"findings": s.Findings,
		"config":   s.Config,
	}
	for k, v := range s.Parts {
		m[k] = v
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (s *Status) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	s.Parts = map[string]json.RawMessage{}
	for k, v := range m {
		var err error
		switch k {
		case "version":
			err = json.Unmarshal(v, &s.Version)
		case "overall":
			err = json.Unmarshal(v, &s.Overall)
		case "findings":
			err = json.Unmarshal(v, &s.Findings)
		case "config":
			err = json.Unmarshal(v, &s.Config)
		default:
			s.Parts[k] = v
		}
		if err != nil {
			return fmt.Errorf("decoding status field %s: %w", k, err)
		}
	}
	return nil
}

// Snapshot builds the status document now.
func (a *Agent) Snapshot() Status {
	a.mu.Lock()
	cs := ConfigStatus{
		Path:            a.cfg.Path,
		LoadedAt:        a.loadedAt,
		LastReloadAt:    a.reloadAt,
		LastReloadError: a.reloadErr,
		ApplyErrors:     map[string]string{},
	}
	for _, w := range a.cfg.Warnings {
		cs.Warnings = append(cs.Warnings, w.String())
	}
	for k, v := range a.applyErrors {
		cs.ApplyErrors[k] = v
	}
	a.mu.Unlock()
	st := Status{Version: Version, Config: cs, Parts: map[string]json.RawMessage{}}
	for _, s := range a.subs {
		b, err := json.Marshal(s.status())
		if err != nil {
			b, _ = json.Marshal(map[string]string{"error": err.Error()})
		}
		st.Parts[s.name] = b
		st.Findings = append(st.Findings, s.finds()...)
	}
	if cs.LastReloadError != "" {
		st.Findings = append(st.Findings, health.Warn("config", "last reload failed, previous config in force: "+firstLine(cs.LastReloadError)))
	}
	names := make([]string, 0, len(cs.ApplyErrors))
	for k := range cs.ApplyErrors {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		st.Findings = append(st.Findings, health.Warn(k, "applying config: "+cs.ApplyErrors[k]))
	}
	if st.Findings == nil {
		st.Findings = []health.Finding{}
	}
	st.Overall = health.Worst(st.Findings)
	return st
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (...)"
	}
	return s
}

// WriteHuman prints the compact summary `zguard status` shows.
func WriteHuman(w io.Writer, st Status) {
	fmt.Fprintf(w, "zguard %s: %s\n", st.Version, st.Overall)
	loaded := "not loaded"
	if !st.Config.LoadedAt.IsZero() {
		loaded = "loaded " + time.Since(st.Config.LoadedAt).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(w, "  %-10s %s (%s)\n", "config", st.Config.Path, loaded)
	var c supervisor.Status
	if raw, ok := st.Parts["container"]; ok && json.Unmarshal(raw, &c) == nil {
		id := c.ID
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(w, "  %-10s %s %s (health %s) id %s image %s restarts %d\n", "container", c.Name, c.State, c.Health, orDash(id), c.Image, c.Restarts)
		var ports []string
		for _, p := range c.Ports {
			ports = append(ports, fmt.Sprintf("%s:%d->%d/%s", p.HostIP, p.HostPort, p.Container, p.Protocol))
		}
		if len(ports) > 0 {
			fmt.Fprintf(w, "  %-10s %s\n", "", strings.Join(ports, ", "))
		}
		if c.LastUpdate != nil {
			fmt.Fprintf(w, "  %-10s last update: %s %s\n", "", c.LastUpdate.Result, c.LastUpdate.Error)
		}
	}
	for _, name := range []string{"firewall", "output", "gpu", "gateway"} {
		raw, ok := st.Parts[name]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "  %-10s %s\n", name, summarize(raw))
	}
	if len(st.Findings) > 0 {
		fmt.Fprintln(w, "problems:")
		for _, f := range st.Findings {
			fmt.Fprintf(w, "  %-8s %s: %s\n", f.Level, f.Subsystem, f.Msg)
		}
	}
}

// summarize prints a subsystem's scalar fields on one line, so a new
// subsystem shows up without a change here.
func summarize(raw json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return string(raw)
	}
	keys := make([]string, 0, len(m))
	for k, v := range m {
		switch v.(type) {
		case string, bool, float64:
			if s, ok := v.(string); ok && (s == "" || isTimestamp(s)) {
				continue // times are in --json; the summary stays short
			}
			keys = append(keys, k)
		case []any:
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		pri := func(k string) int {
			switch k {
			case "enabled", "available":
				return 0
			case "in_sync", "path", "backend", "listen":
				return 1
			}
			return 2
		}
		if pri(keys[i]) != pri(keys[j]) {
			return pri(keys[i]) < pri(keys[j])
		}
		return keys[i] < keys[j]
	})
	var parts []string
	for _, k := range keys {
		v := m[k]
		if l, ok := v.([]any); ok {
			if len(l) == 0 || len(l) > 6 {
				parts = append(parts, fmt.Sprintf("%s=[%d]", k, len(l)))
				continue
			}
			b, _ := json.Marshal(l)
			if len(b) > 80 {
				parts = append(parts, fmt.Sprintf("%s=[%d]", k, len(l)))
				continue
			}
			parts = append(parts, fmt.Sprintf("%s=%s", k, b))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	s := strings.Join(parts, " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

func isTimestamp(s string) bool {
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
