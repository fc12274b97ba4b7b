package gpu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
)

// This file maps host PIDs (what NVML reports) to containers, through
// /proc/PID/cgroup. Reading and parsing are split so parsing can be tested
// on testdata/.

// procFS reads files under a /proc root; tests point root at testdata/.
type procFS struct{ root string }

// path joins the proc root with the parts (the one root-path helper).
func (p procFS) path(parts ...string) string {
	return filepath.Join(append([]string{p.root}, parts...)...)
}

// containerOf returns the 64-hex container ID that pid belongs to, or ""
// for a process outside any container. A vanished process is an error.
func (p procFS) containerOf(pid int) (string, error) {
	data, err := os.ReadFile(p.path(strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("reading cgroup of pid %d: %w", pid, err)
	}
	return parseCgroup(data), nil
}

// containerIDPattern matches a cgroup path element that names a container:
//
//	/docker/<id>                                   cgroup v1, or v2 with the cgroupfs driver
//	/system.slice/docker-<id>.scope                v2 with the systemd driver
//	/kubepods/burstable/pod<uid>/<id>              containerd under kubelet (cgroupfs)
//	/kubepods.slice/.../cri-containerd-<id>.scope  containerd under kubelet (systemd)
//	.../crio-<id>.scope, .../libpod-<id>.scope     CRI-O, Podman
var containerIDPattern = regexp.MustCompile(`^(?:docker-|cri-containerd-|crio-|libpod-)?([0-9a-f]{64})(?:\.scope)?$`)

// parseCgroup extracts the container ID from the text of /proc/PID/cgroup.
// With several hierarchies (cgroup v1) the first line that names a
// container wins; within a line the innermost (last) ID wins, which is the
// one the host's container engine knows in the common one-level case.
func parseCgroup(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		// hierarchy-ID:controller-list:cgroup-path
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		id := ""
		for _, elem := range bytes.Split(line[i+1+j+1:], []byte("/")) {
			if m := containerIDPattern.FindSubmatch(elem); m != nil {
				id = string(m[1])
			}
		}
		if id != "" {
			return id
		}
	}
	return ""
}
