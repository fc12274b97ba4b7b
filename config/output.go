package config

import (
	"os/user"
	"path/filepath"
	"strconv"
	"time"
)

// Output is the output folder whose owner and modes zguard keeps locked.
type Output struct {
	Enabled  bool   `toml:"enabled"`
	Path     string `toml:"path"`
	Owner    string `toml:"owner"` // user name or numeric uid
	Group    string `toml:"group"` // group name or numeric gid
	DirMode  Mode   `toml:"dir_mode"`
	FileMode Mode   `toml:"file_mode"`
	Watch    bool   `toml:"watch"`
	// Symlinks inside the folder are "report"ed or "remove"d; never followed.
	Symlinks string `toml:"symlinks"`
	// FullPassInterval is the safety-net full walk, for missed inotify events.
	FullPassInterval Duration `toml:"full_pass_interval"`
}

func defaultOutput() Output {
	return Output{
		Enabled:          true,
		Path:             "/root/output",
		Owner:            "root",
		Group:            "root",
		DirMode:          0o700,
		FileMode:         0o600,
		Watch:            true,
		Symlinks:         "report",
		FullPassInterval: Duration(10 * time.Minute),
	}
}

// systemDirs are folders the output lock must never take over.
var systemDirs = map[string]bool{
	"/": true, "/bin": true, "/boot": true, "/dev": true, "/etc": true, "/home": true,
	"/lib": true, "/lib64": true, "/opt": true, "/proc": true, "/root": true, "/run": true,
	"/sbin": true, "/srv": true, "/sys": true, "/tmp": true, "/usr": true, "/var": true,
	"/var/lib": true, "/var/log": true, "/usr/local": true, "/var/lib/docker": true,
}

// LookupUID resolves a user name or numeric uid.
func LookupUID(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

// LookupGID resolves a group name or numeric gid.
func LookupGID(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

func (o *Output) validate(v *validator, c *Container) {
	if !o.Enabled {
		return
	}
	if !filepath.IsAbs(o.Path) {
		v.errorf("output.path", "must be an absolute path, got %q", o.Path)
	} else if clean := filepath.Clean(o.Path); systemDirs[clean] {
		v.errorf("output.path", "%q is a system folder; point it at the ComfyUI output folder", o.Path)
	} else {
		o.Path = clean
	}
	uid, err := LookupUID(o.Owner)
	if err != nil {
		v.errorf("output.owner", "unknown user %q", o.Owner)
	}
	gid, err := LookupGID(o.Group)
	if err != nil {
		v.errorf("output.group", "unknown group %q", o.Group)
	}
	switch o.Symlinks {
	case "report", "remove":
	default:
		v.errorf("output.symlinks", "must be report or remove, got %q", o.Symlinks)
	}
	if o.DirMode&0o700 != 0o700 {
		v.warnf("output.dir_mode", "dir_mode %04o does not give the owner rwx: ComfyUI (running as the owner) cannot write", uint32(o.DirMode))
	}
	if o.FullPassInterval != 0 && o.FullPassInterval.D() < time.Second {
		v.errorf("output.full_pass_interval", "must be \"0\" (off) or at least 1s")
	}
	// A container that runs as another uid must still be able to write.
	if c.User != "" {
		cu := c.User
		if i := indexByte(cu, ':'); i >= 0 {
			cu = cu[:i]
		}
		cuid, err := strconv.Atoi(cu)
		if err == nil && cuid != 0 && cuid != uid {
			v.warnf("output.owner", "container runs as uid %d but the output folder is locked to uid %d (gid %d) mode %04o: ComfyUI may be unable to write", cuid, uid, gid, uint32(o.DirMode))
		}
	}
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}
