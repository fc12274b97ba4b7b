package outputlock

import (
	"fmt"
	"time"

	"github.com/zguard/zguard/health"
)

// Status is the output section of `zguard status --json`.
type Status struct {
	Enabled bool   `json:"enabled"`
	Path    string `json:"path"`
	// Mode is the wanted "dir_mode/file_mode", e.g. "0700/0600".
	Mode string `json:"mode"`
	// Owner is the wanted "owner:group" as configured, e.g. "root:root".
	Owner string `json:"owner"`
	// InSync says the latest full pass left every entry at the wanted owner
	// and mode (or fixed it), and nothing since failed or was left alone.
	InSync bool `json:"in_sync"`
	// Fixed counts entries whose owner or mode was changed since start.
	Fixed uint64 `json:"fixed"`
	// Watching says inotify is watching the tree; Watches is the number of
	// directories under watch.
	Watching bool `json:"watching"`
	Watches  int  `json:"watches"`
	// WatchError says why inotify could not be started (then only full
	// passes keep the folder locked).
	WatchError string `json:"watch_error,omitempty"`
	Root       Root   `json:"root"`
	// LastPass is the latest full walk; Watched sums what event handling
	// did since start.
	LastPass *Pass  `json:"last_pass,omitempty"`
	Watched  Counts `json:"watched"`
	// The latest symlink, hard link and special file found, with when.
	LastSymlink  *Found `json:"last_symlink,omitempty"`
	LastHardlink *Found `json:"last_hardlink,omitempty"`
	LastOddFile  *Found `json:"last_odd_file,omitempty"`
	// Errors are the most recent problems, newest last (at most maxErrors).
	Errors []ErrorEntry `json:"errors,omitempty"`

	passErr            string // why the latest pass could not run
	unresolved         uint64 // entries the latest pass (and events since) could not fix
	hardlinksSincePass uint64
}

// Root is the folder itself: wanted against actual owner and mode.
type Root struct {
	Exists      bool   `json:"exists"`
	WantedOwner string `json:"wanted_owner"` // "uid:gid"
	WantedMode  string `json:"wanted_mode"`
	ActualOwner string `json:"actual_owner,omitempty"`
	ActualMode  string `json:"actual_mode,omitempty"`
}

// Pass describes one full walk.
type Pass struct {
	Start    time.Time `json:"start"`
	Duration string    `json:"duration"`
	Reason   string    `json:"reason"`
	Counts
	Writes   uint64 `json:"writes"`
	Syscalls uint64 `json:"syscalls"`
}

// Found is a symlink, hard link or special file met in the folder.
type Found struct {
	Path   string    `json:"path"`             // relative to the folder
	Detail string    `json:"detail,omitempty"` // e.g. "fifo"
	Action string    `json:"action"`           // reported, removed, left unchanged
	Time   time.Time `json:"time"`
}

// ErrorEntry is one problem met while locking.
type ErrorEntry struct {
	Time  time.Time `json:"time"`
	Path  string    `json:"path,omitempty"`
	Error string    `json:"error"`
}

const (
	maxErrors    = 10
	maxLogged    = 10 // findings logged one by one per pass or batch
	subsystem    = "output"
	displayOfTop = "."
)

// Status returns a snapshot; it never waits for a pass in progress.
func (l *Lock) Status() Status {
	l.smu.Lock()
	defer l.smu.Unlock()
	s := l.st
	if s.LastPass != nil {
		p := *s.LastPass
		p.Writes, p.Syscalls = p.Counts.Writes(), p.Counts.Syscalls()
		s.LastPass = &p
	}
	s.Errors = append([]ErrorEntry(nil), s.Errors...)
	return s
}

// Findings says what an operator should look at: the folder missing or not
// in sync, and symlinks, hard links or special files found since the
// latest full pass began (so a removed symlink stops warning after the next
// clean pass, and one left in place keeps warning).
func (s Status) Findings() []health.Finding {
	if !s.Enabled {
		return nil
	}
	var fs []health.Finding
	warn := func(format string, args ...any) {
		fs = append(fs, health.Warn(subsystem, fmt.Sprintf(format, args...)))
	}
	switch {
	case s.LastPass == nil:
		warn("output folder %s has not been locked yet", s.Path)
	case !s.Root.Exists && s.passErr != "":
		warn("output folder %s cannot be locked: %s", s.Path, s.passErr)
	case !s.InSync:
		msg := fmt.Sprintf("output folder %s is not in sync with owner %s mode %s", s.Path, s.Owner, s.Mode)
		if s.Root.ActualOwner != s.Root.WantedOwner || s.Root.ActualMode != s.Root.WantedMode {
			msg += fmt.Sprintf(" (folder itself is %s %s)", s.Root.ActualOwner, s.Root.ActualMode)
		}
		if n := len(s.Errors); n > 0 {
			msg += "; last error: " + s.Errors[n-1].Error
		}
		warn("%s", msg)
	}
	if s.WatchError != "" {
		warn("not watching the output folder for new files (full passes only): %s", s.WatchError)
	}
	if s.LastPass == nil {
		return fs
	}
	since := s.LastPass.Start
	for _, f := range []struct {
		what string
		f    *Found
	}{{"symlink", s.LastSymlink}, {"hard link to a file that may live outside", s.LastHardlink}, {"special file", s.LastOddFile}} {
		if f.f != nil && !f.f.Time.Before(since) {
			detail := ""
			if f.f.Detail != "" {
				detail = " (" + f.f.Detail + ")"
			}
			warn("%s in output folder: %s%s, %s", f.what, f.f.Path, detail, f.f.Action)
		}
	}
	return fs
}

// setWanted records the section in force. Called with mu held.
func (l *Lock) setWanted() {
	l.smu.Lock()
	defer l.smu.Unlock()
	l.st.Enabled = true
	l.st.Path = l.cfg.Path
	l.st.Mode = fmt.Sprintf("%04o/%04o", l.want.dirMode, l.want.fileMode)
	l.st.Owner = l.cfg.Owner + ":" + l.cfg.Group
	l.st.Root.WantedOwner = fmt.Sprintf("%d:%d", l.want.uid, l.want.gid)
	l.st.Root.WantedMode = fmt.Sprintf("%04o", l.want.dirMode)
}

// noteReport records a finding or an error from the walker; logged counts
// what was logged one by one in this pass or batch.
func (l *Lock) noteReport(r report, logged *int) {
	now := l.now()
	p := r.path
	if p == "" {
		p = displayOfTop
	}
	doLog := *logged < maxLogged
	if doLog {
		*logged++
	}
	if r.err != nil {
		if doLog {
			l.log.Error("locking output folder", "path", p, "err", r.err)
		}
		l.smu.Lock()
		l.addErrLocked(now, p, r.err.Error())
		l.smu.Unlock()
		return
	}
	f := &Found{Path: p, Detail: r.detail, Action: "reported", Time: now}
	if doLog {
		l.log.Warn("found in output folder", "what", r.find.String(), "path", p, "detail", r.detail, "removing", r.find == findSymlink && l.want.removeSymlinks)
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	switch r.find {
	case findSymlink:
		if l.want.removeSymlinks {
			f.Action = "removed"
		}
		l.st.LastSymlink = f
	case findHardlink:
		f.Action = "left unchanged"
		l.st.LastHardlink = f
		l.st.hardlinksSincePass++
		l.st.InSync = false
	case findOdd:
		l.st.LastOddFile = f
	}
}

func (f finding) String() string {
	switch f {
	case findSymlink:
		return "symlink"
	case findHardlink:
		return "hard link"
	case findOdd:
		return "special file"
	}
	return "none"
}

// noteErr logs and records an error.
func (l *Lock) noteErr(p string, err error) {
	l.log.Error("locking output folder", "path", p, "err", err)
	l.smu.Lock()
	defer l.smu.Unlock()
	l.addErrLocked(l.now(), p, err.Error())
}

// addErrLocked appends to the bounded error list. Called with smu held.
func (l *Lock) addErrLocked(t time.Time, p, msg string) {
	l.st.Errors = append(l.st.Errors, ErrorEntry{Time: t, Path: p, Error: msg})
	if n := len(l.st.Errors); n > maxErrors {
		l.st.Errors = append(l.st.Errors[:0], l.st.Errors[n-maxErrors:]...)
	}
}
