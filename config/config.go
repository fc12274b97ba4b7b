// Package config loads, defaults and validates zguard's TOML configuration.
//
// Loading is strict: unknown keys are errors, every value is checked, and
// each problem names the file and line (or the key path where the TOML
// library does not give a line). `zguard check` and every reload run exactly
// this code, so a file that passes check is a file the agent will accept.
package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where the systemd unit and the CLI look for the config.
const DefaultPath = "/etc/zguard/config.toml"

// Config is the whole configuration file. Each section is handed to its
// subsystem's Apply; only [container] is required.
type Config struct {
	Agent     Agent     `toml:"agent"`
	Container Container `toml:"container"`
	Firewall  Firewall  `toml:"firewall"`
	Output    Output    `toml:"output"`
	GPU       GPU       `toml:"gpu"`
	Gateway   Gateway   `toml:"gateway"`

	// Path is the file this config was read from (not a TOML key).
	Path string `toml:"-"`
	// Warnings are problems that do not stop the config from loading
	// (e.g. an empty allowlist that locks everybody out).
	Warnings []Problem `toml:"-"`
}

// Problem is one finding about a config file, located by line where known.
type Problem struct {
	File string
	Line int    // 0 when unknown
	Key  string // dotted key path, e.g. "container.ports[1].host"
	Msg  string
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Key != "" {
		return fmt.Sprintf("%s: %s: %s", loc, p.Key, p.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, p.Msg)
}

// Error lists every problem that stopped a config from loading.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates config text; name is used in messages.
func Parse(name string, data []byte) (*Config, error) {
	cfg := Defaults()
	cfg.Path = name
	lines := locateKeys(data)
	md, err := toml.NewDecoder(strings.NewReader(string(data))).Decode(cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p := Problem{File: name, Line: pe.Position.Line, Msg: pe.Message}
			if pe.LastKey != "" {
				p.Key = pe.LastKey
			}
			return nil, &Error{Problems: []Problem{p}}
		}
		return nil, &Error{Problems: []Problem{decodeProblem(name, err)}}
	}
	v := &validator{file: name, lines: lines}
	for _, k := range md.Undecoded() {
		v.errorf(k.String(), "unknown key %q", k.String())
	}
	if !md.IsDefined("container") {
		v.errorf("container", "the [container] section is required")
	}
	cfg.validate(v)
	if len(v.errs) > 0 {
		sort.SliceStable(v.errs, func(i, j int) bool { return v.errs[i].Line < v.errs[j].Line })
		return nil, &Error{Problems: v.errs}
	}
	cfg.Warnings = v.warns
	return cfg, nil
}

// typeErrRE matches the TOML library's type errors, which carry the line
// only inside the message: `toml: line 2 (last key "container.image"): ...`.
var typeErrRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)

func decodeProblem(name string, err error) Problem {
	msg := err.Error()
	if m := typeErrRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{File: name, Line: line, Key: m[2], Msg: m[3]}
	}
	return Problem{File: name, Msg: strings.TrimPrefix(msg, "toml: ")}
}

// Defaults returns a config holding every default, as documented in the
// annotated config.toml at the repository root.
func Defaults() *Config {
	return &Config{
		Agent:     defaultAgent(),
		Container: defaultContainer(),
		Firewall:  defaultFirewall(),
		Output:    defaultOutput(),
		GPU:       defaultGPU(),
		Gateway:   defaultGateway(),
	}
}

func (c *Config) validate(v *validator) {
	c.Agent.validate(v)
	c.Container.validate(v)
	c.Firewall.validate(v, &c.Container)
	c.Output.validate(v, &c.Container)
	c.GPU.validate(v)
	c.Gateway.validate(v, &c.Container, &c.Firewall)
}

// validator collects problems and knows where each key sits in the file.
type validator struct {
	file  string
	lines map[string]int
	errs  []Problem
	warns []Problem
}

func (v *validator) problem(key, format string, args ...any) Problem {
	return Problem{File: v.file, Line: v.lineOf(key), Key: key, Msg: fmt.Sprintf(format, args...)}
}

func (v *validator) errorf(key, format string, args ...any) {
	v.errs = append(v.errs, v.problem(key, format, args...))
}

func (v *validator) warnf(key, format string, args ...any) {
	v.warns = append(v.warns, v.problem(key, format, args...))
}

// lineOf finds the line of key, or of its nearest written parent.
func (v *validator) lineOf(key string) int {
	k := key
	for k != "" {
		if n, ok := v.lines[stripIndex(k)]; ok {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

func stripIndex(k string) string {
	var b strings.Builder
	depth := 0
	for _, r := range k {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// locateKeys maps dotted key paths to the line where they are written. It
// understands [tables], [[arrays]] and `key = ` lines, which covers the
// files operators write; keys inside inline tables map to their parent.
func locateKeys(data []byte) map[string]int {
	out := map[string]int{}
	table := ""
	inMultiline := ""
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if inMultiline != "" {
			if strings.Contains(line, inMultiline) {
				inMultiline = ""
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			name := strings.Trim(line, "[] \t")
			if j := strings.Index(name, "#"); j >= 0 {
				name = strings.TrimSpace(strings.Trim(name[:j], "[] \t"))
			}
			table = cleanKey(name)
			if _, ok := out[table]; !ok {
				out[table] = i + 1
			}
			continue
		}
		eq := strings.Index(line, "=")
		if eq <= 0 {
			continue
		}
		key := cleanKey(line[:eq])
		full := key
		if table != "" {
			full = table + "." + key
		}
		if _, ok := out[full]; !ok {
			out[full] = i + 1
		}
		rest := line[eq+1:]
		for _, q := range []string{`"""`, `'''`} {
			if strings.Count(rest, q) == 1 {
				inMultiline = q
			}
		}
	}
	return out
}

func cleanKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}
