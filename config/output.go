package config

import (
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
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

// systemTrees are folders nothing below which may be the output folder:
// locking them (0700 root) would break the system or Docker itself.
var systemTrees = []string{
	"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
	"/sbin", "/sys", "/usr", "/var/lib/docker", "/var/lib/containerd",
}

// systemFolder says why path may not be the output folder, or "".
func systemFolder(path string) string {
	if systemDirs[path] {
		return fmt.Sprintf("%q is a system folder; point it at the ComfyUI output folder", path)
	}
	for _, t := range systemTrees {
		if strings.HasPrefix(path, t+"/") {
			return fmt.Sprintf("%q is inside the system folder %s; point it at the ComfyUI output folder", path, t)
		}
	}
	return ""
}

// CheckOutputPath says why path cannot be the output folder (it is
// relative, or a system folder that locking would break), or nil. The
// output lock calls it again before every Apply.
func CheckOutputPath(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("must be an absolute path, got %q", path)
	}
	if msg := systemFolder(filepath.Clean(path)); msg != "" {
		return errors.New(msg)
	}
	return nil
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
	if err := CheckOutputPath(o.Path); err != nil {
		v.errorf("output.path", "%v", err)
	} else {
		o.Path = filepath.Clean(o.Path)
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
	if !o.Watch && o.FullPassInterval == 0 {
		v.warnf("output.watch", "watch = false and full_pass_interval = \"0\": the folder is locked only at start and on reload")
	}
	if len(v.errs) > 0 {
		return
	}
	// A container that runs as another user must still be able to write.
	if msg := lockout(ParseContainerUser(c.User), uid, gid, o.DirMode, o.FileMode); msg != "" {
		v.warnf("output.owner", "%s", msg)
	}
	if !mounted(o.Path, c.Volumes) {
		v.warnf("output.path", "%s is not in container.volumes: zguard would lock a folder ComfyUI does not write to (mount it, e.g. \"%s:/root/ComfyUI/output\")", o.Path, o.Path)
	}
}

// ContainerUser is container.user as Docker reads it: "user[:group]",
// each part a name or a number. Names are resolved inside the image, so
// the host cannot know their ids: UID and GID are -1 then (and when unset).
type ContainerUser struct {
	User, Group string
	UID, GID    int
}

// ParseContainerUser splits container.user. An empty string is the image's
// own default user.
func ParseContainerUser(s string) ContainerUser {
	u := ContainerUser{UID: -1, GID: -1}
	u.User, u.Group, _ = strings.Cut(s, ":")
	if n, err := strconv.ParseUint(u.User, 10, 31); err == nil {
		u.UID = int(n)
	}
	if n, err := strconv.ParseUint(u.Group, 10, 31); err == nil {
		u.GID = int(n)
	}
	return u
}

// IsRoot reports whether the container runs as root (which can write
// whatever the owner and modes; Docker gives it CAP_DAC_OVERRIDE).
func (u ContainerUser) IsRoot() bool { return u.User == "root" || u.UID == 0 }

// lockout says how the locked owner/modes keep the container user from
// writing its images or reading them back (ComfyUI's /view, previews), or
// "" when they do not. The image's default user (no container.user) is
// assumed to be root, as it is in ComfyUI images.
func lockout(u ContainerUser, uid, gid int, dirMode, fileMode Mode) string {
	if u.User == "" || u.IsRoot() {
		return ""
	}
	who := fmt.Sprintf("uid %d", u.UID)
	if u.UID < 0 {
		return fmt.Sprintf("container runs as %q, a name zguard cannot resolve outside the image: make sure that user is %d (the locked owner) or root, or ComfyUI may be unable to write its images", u.User, uid)
	}
	if u.Group != "" {
		who += ":" + u.Group
	}
	// Access as the kernel checks it: the owner's bits if the uid matches,
	// else the group's if the gid does, else the others'.
	bits := func(m Mode) Mode {
		switch {
		case u.UID == uid:
			return m >> 6 & 7
		case u.GID >= 0 && u.GID == gid:
			return m >> 3 & 7
		}
		return m & 7
	}
	lock := fmt.Sprintf("the output folder is locked to %d:%d with dir_mode %04o, file_mode %04o", uid, gid, uint32(dirMode), uint32(fileMode))
	if bits(dirMode)&3 != 3 {
		return fmt.Sprintf("container runs as %s but %s: ComfyUI cannot write its images (set owner = \"%d\" or run the container as root)", who, lock, u.UID)
	}
	if bits(fileMode)&4 == 0 {
		return fmt.Sprintf("container runs as %s but %s: ComfyUI cannot read its images back (/view, previews)", who, lock)
	}
	return ""
}

// mounted reports whether path is (inside, or holds) a bind mount source.
func mounted(path string, volumes []string) bool {
	for _, s := range volumes {
		vol, err := ParseVolume(s)
		if err != nil || vol.ReadOnly {
			continue
		}
		h := filepath.Clean(vol.Host)
		if h == path || strings.HasPrefix(path, h+"/") || strings.HasPrefix(h, path+"/") {
			return true
		}
	}
	return false
}
