package config

import (
	"strings"
	"testing"
)

func TestLockout(t *testing.T) {
	cases := map[string]struct {
		user              string
		uid, gid          int
		dirMode, fileMode Mode
		wantSubstr        string // "" = no warning
	}{
		"image default user":         {"", 0, 0, 0o700, 0o600, ""},
		"root by name":               {"root", 0, 0, 0o700, 0o600, ""},
		"root by uid with group":     {"0:1000", 0, 0, 0o700, 0o600, ""},
		"same uid as owner":          {"1000", 1000, 1000, 0o700, 0o600, ""},
		"same uid, owner lacks w":    {"1000", 1000, 1000, 0o500, 0o600, "cannot write"},
		"other uid, root-owned 0700": {"1000", 0, 0, 0o700, 0o600, "cannot write"},
		"other uid, group matches":   {"1000:1000", 0, 1000, 0o770, 0o640, ""},
		"group matches, no g+w":      {"1000:1000", 0, 1000, 0o750, 0o640, "cannot write"},
		"group matches, no g+r file": {"1000:1000", 0, 1000, 0o770, 0o600, "cannot read"},
		"other uid, world writable":  {"1000", 0, 0, 0o703, 0o604, ""},
		"name cannot be resolved":    {"comfy", 0, 0, 0o700, 0o600, "cannot resolve"},
		"name with group":            {"comfy:comfy", 0, 0, 0o700, 0o600, "cannot resolve"},
		// The owner's bits apply to the owner even when others have more.
		"owner bits win": {"1000", 1000, 0, 0o077, 0o066, "cannot write"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got := lockout(ParseContainerUser(c.user), c.uid, c.gid, c.dirMode, c.fileMode)
			if c.wantSubstr == "" && got != "" {
				t.Errorf("unexpected warning: %s", got)
			}
			if c.wantSubstr != "" && !strings.Contains(got, c.wantSubstr) {
				t.Errorf("warning %q does not say %q", got, c.wantSubstr)
			}
		})
	}
}

func TestParseContainerUser(t *testing.T) {
	cases := map[string]ContainerUser{
		"":            {UID: -1, GID: -1},
		"1000":        {User: "1000", UID: 1000, GID: -1},
		"1000:100":    {User: "1000", Group: "100", UID: 1000, GID: 100},
		"comfy":       {User: "comfy", UID: -1, GID: -1},
		"comfy:100":   {User: "comfy", Group: "100", UID: -1, GID: 100},
		"-1":          {User: "-1", UID: -1, GID: -1},
		"99999999999": {User: "99999999999", UID: -1, GID: -1},
		"0:0:0":       {User: "0", Group: "0:0", UID: 0, GID: -1},
	}
	for in, want := range cases {
		if got := ParseContainerUser(in); got != want {
			t.Errorf("ParseContainerUser(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func FuzzParseContainerUser(f *testing.F) {
	for _, s := range []string{"", "0", "1000:1000", "comfy", "comfy:video", ":", "1:", ":1", "+5", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u := ParseContainerUser(s)
		if u.UID < -1 || u.GID < -1 {
			t.Fatalf("negative id from %q: %+v", s, u)
		}
		if u.UID >= 0 && u.User == "" {
			t.Fatalf("uid without user from %q", s)
		}
		if u.IsRoot() && u.User != "root" && u.UID != 0 {
			t.Fatalf("root from %q", s)
		}
		// Whatever it is, lockout must answer without panicking.
		_ = lockout(u, 0, 0, 0o700, 0o600)
	})
}

func TestSystemFolder(t *testing.T) {
	cases := map[string]bool{
		"/":                       true,
		"/etc":                    true,
		"/etc/zguard":             true,
		"/usr/share/x":            true,
		"/var/lib/docker/volumes": true,
		"/proc/1":                 true,
		"/root":                   true,
		"/root/output":            false,
		"/tmp/zguard-test/output": false,
		"/data/comfy/output":      false,
		"/var/lib/comfyui/output": false,
		"/etcetera/output":        false,
	}
	for p, bad := range cases {
		if got := systemFolder(p) != ""; got != bad {
			t.Errorf("systemFolder(%q) refused = %v, want %v", p, got, bad)
		}
	}
}

func TestOutputWarnings(t *testing.T) {
	const mount = "volumes = [\"/root/output:/root/ComfyUI/output\"]\n"
	cases := map[string]struct {
		text string
		want string // substring of a warning on output.*; "" = none
	}{
		"defaults, mounted":    {minimal + mount, ""},
		"not mounted":          {minimal, "is not in container.volumes"},
		"parent mounted":       {minimal + "volumes = [\"/root:/root/host\"]\n", ""},
		"mounted read-only":    {minimal + "volumes = [\"/root/output:/out:ro\"]\n", "is not in container.volumes"},
		"non-root user":        {minimal + mount + "user = \"1000\"\n", "cannot write"},
		"non-root user owns":   {minimal + mount + "user = \"1000:1000\"\n[output]\nowner = \"1000\"\ngroup = \"1000\"\n", ""},
		"named user":           {minimal + mount + "user = \"comfy\"\n", "cannot resolve"},
		"no watch, no passes":  {minimal + mount + "[output]\nwatch = false\nfull_pass_interval = \"0\"\n", "locked only at start"},
		"disabled, no warning": {minimal + "user = \"1000\"\n[output]\nenabled = false\n", ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			cfg, err := Parse("c.toml", []byte(c.text))
			if err != nil {
				t.Fatal(err)
			}
			var ws []string
			for _, w := range cfg.Warnings {
				if strings.HasPrefix(w.Key, "output.") {
					ws = append(ws, w.String())
				}
			}
			if c.want == "" && len(ws) > 0 {
				t.Errorf("unexpected warnings: %v", ws)
			}
			if c.want != "" && !strings.Contains(strings.Join(ws, "\n"), c.want) {
				t.Errorf("warnings %v do not say %q", ws, c.want)
			}
		})
	}
}

func TestOutputPathErrors(t *testing.T) {
	for _, p := range []string{"/etc/ssl", "/usr/lib/output", "/"} {
		_, err := Parse("c.toml", []byte(minimal+"[output]\npath = \""+p+"\"\n"))
		if err == nil || !strings.Contains(err.Error(), "system folder") {
			t.Errorf("path %s: err = %v, want a system-folder error", p, err)
		}
	}
}
