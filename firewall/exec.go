package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// commander runs the netfilter tools (iptables, ip6tables, their -save and
// -restore variants, ipset, nft). go-iptables forks one iptables per rule
// and has neither iptables-restore nor ipset, so zguard calls the tools
// itself: one restore per family is one atomic transaction.
type commander interface {
	run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// execCommander runs the real binaries, optionally inside a network
// namespace (`ip netns exec NS ...`), which is how tests isolate themselves.
type execCommander struct {
	netns string
}

func (e execCommander) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if e.netns != "" {
		argv = append([]string{"ip", "netns", "exec", e.netns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		var ee *exec.ExitError
		if errors.As(err, &ee) && msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s: %s", strings.Join(argv, " "), msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return stdout.Bytes(), nil
}

// countingCommander counts invocations (for status and the benchmark).
type countingCommander struct {
	next   commander
	calls  int
	writes int
}

func (c *countingCommander) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	c.calls++
	if isWrite(name, args) {
		c.writes++
	}
	return c.next.run(ctx, stdin, name, args...)
}

// isWrite reports whether a tool invocation changes state.
func isWrite(name string, args []string) bool {
	switch {
	case strings.HasSuffix(name, "-save"):
		return false
	case name == "ipset":
		return len(args) > 0 && args[0] != "list" && args[0] != "save"
	case name == "nft":
		return len(args) > 0 && args[0] == "delete"
	case strings.HasSuffix(name, "tables"):
		for _, a := range args {
			if a == "-S" || a == "-L" || a == "--version" || a == "-C" {
				return false
			}
		}
	}
	return true
}
