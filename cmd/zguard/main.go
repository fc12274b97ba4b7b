// Command zguard is the agent that keeps a ComfyUI GPU server locked down,
// and the CLI that talks to it. See `zguard help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// globals are the flags every command understands.
type globals struct {
	socket string // control socket; "" means the config's or the default
	config string // config file path
}

// command is one subcommand; run returns the process exit code.
type command struct {
	summary string
	run     func(ctx context.Context, g *globals, args []string) int
}

var commands = map[string]command{}

// register adds a subcommand; each lives in its own file.
func register(name, summary string, run func(ctx context.Context, g *globals, args []string) int) {
	commands[name] = command{summary: summary, run: run}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	g := &globals{}
	fs := flag.NewFlagSet("zguard", flag.ContinueOnError)
	fs.StringVar(&g.socket, "socket", "", "control socket path (default: from the config, or /run/zguard/zguard.sock)")
	fs.Usage = usage
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		usage()
		return 2
	}
	name := rest[0]
	if name == "help" || name == "-h" || name == "--help" {
		usage()
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "zguard: unknown command %q\n\n", name)
		usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd.run(ctx, g, rest[1:])
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: zguard [--socket PATH] COMMAND [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-9s %s\n", n, commands[n].summary)
	}
}

// exitErr prints err and returns code, for commands that fail early.
func exitErr(code int, err error) int {
	if errors.Is(err, context.Canceled) {
		return 0
	}
	fmt.Fprintf(os.Stderr, "zguard: %v\n", err)
	return code
}
