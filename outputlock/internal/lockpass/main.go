// Command lockpass runs one output-lock pass over a folder and prints what
// it did as one line of key=value pairs; with -make it first builds a test
// tree of files with mixed modes and owners. bench/outputlock.sh uses it
// to time the lock against chmod -R / chown -R on the same tree.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/outputlock"
)

func main() {
	path := flag.String("path", "", "folder to lock (absolute)")
	owner := flag.String("owner", "0", "owner")
	group := flag.String("group", "0", "group")
	mk := flag.Int("make", 0, "build a tree of this many files under -path (mixed modes and owners) and exit")
	perDir := flag.Int("per-dir", 1000, "files per folder with -make")
	flag.Parse()
	if *path == "" {
		fmt.Fprintln(os.Stderr, "lockpass: -path is required")
		os.Exit(2)
	}
	if *mk > 0 {
		if err := makeTree(*path, *mk, *perDir); err != nil {
			fmt.Fprintln(os.Stderr, "lockpass:", err)
			os.Exit(1)
		}
		return
	}
	l := outputlock.New(outputlock.Deps{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	cfg := config.Output{Enabled: true, Path: *path, Owner: *owner, Group: *group,
		DirMode: 0o700, FileMode: 0o600, Symlinks: "report"}
	start := time.Now()
	if err := l.Apply(context.Background(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "lockpass:", err)
		os.Exit(1)
	}
	wall := time.Since(start)
	p := l.Status().LastPass
	if p == nil {
		fmt.Fprintln(os.Stderr, "lockpass: no pass ran")
		os.Exit(1)
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("seconds=%.3f entries=%d fixed=%d writes=%d syscalls=%d stats=%d opens=%d getdents=%d errors=%d maxrss_kb=%d\n",
		wall.Seconds(), p.Entries, p.Fixed, p.Writes, p.Syscalls, p.Stats, p.Opens, p.Getdents, p.Errors, ru.Maxrss)
}

// makeTree builds n files, perDir to a folder, with modes and owners
// cycling through typical wrong values (and some already right).
func makeTree(root string, n, perDir int) error {
	modes := []os.FileMode{0o644, 0o666, 0o600, 0o755, 0o640}
	owners := [][2]int{{1000, 1000}, {65534, 65534}, {0, 0}}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	var dir string
	for i := 0; i < n; i++ {
		if i%perDir == 0 {
			d := i / perDir
			// Every tenth folder is nested one level deeper.
			dir = filepath.Join(root, fmt.Sprintf("d%04d", d))
			if d%10 == 9 {
				dir = filepath.Join(root, fmt.Sprintf("d%04d", d-1), "nested")
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			o := owners[d%len(owners)]
			if err := os.Chown(dir, o[0], o[1]); err != nil {
				return err
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("ComfyUI_%05d_.png", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return err
		}
		o := owners[i%len(owners)]
		if err := os.Chown(p, o[0], o[1]); err != nil {
			return err
		}
		if err := os.Chmod(p, modes[i%len(modes)]); err != nil {
			return err
		}
	}
	return nil
}
