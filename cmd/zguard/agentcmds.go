package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/zguard/zguard/agent"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/firewall"
	"github.com/zguard/zguard/health"
)

func init() {
	register("run", "run the agent in the foreground (systemd runs this)", cmdRun)
	register("check", "parse and validate a config file; exit 1 on problems", cmdCheck)
	register("status", "show the running agent's status (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)", cmdStatus)
	register("reload", "make the running agent reload its config and print what changed", cmdReload)
	register("version", "print the version", func(ctx context.Context, g *globals, args []string) int {
		fmt.Println("zguard", agent.Version)
		return 0
	})
}

// configFlag adds -c/--config to a command's flags.
func configFlag(fs *flag.FlagSet, g *globals) {
	fs.StringVar(&g.config, "c", config.DefaultPath, "config file")
	fs.StringVar(&g.config, "config", config.DefaultPath, "config file")
}

func cmdRun(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	configFlag(fs, g)
	if fs.Parse(args) != nil {
		return 2
	}
	level := new(slog.LevelVar)
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" {
		// journald stamps every line itself.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, opts))
	slog.SetDefault(log)
	a, err := agent.New(agent.Options{ConfigPath: g.config, Socket: g.socket, Log: log, LogLevel: level})
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintln(os.Stderr, ce.Error())
			return 1
		}
		return exitErr(1, err)
	}
	if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return exitErr(1, err)
	}
	return 0
}

func cmdCheck(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	configFlag(fs, g)
	if fs.Parse(args) != nil {
		return 2
	}
	if fs.NArg() == 1 {
		g.config = fs.Arg(0)
	}
	cfg, err := config.Load(g.config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w.String())
	}
	// What this host would stop the firewall from doing (Docker's nftables
	// backend, mixed legacy/nft tables). The file is still valid, so the
	// exit code stays 0: the agent runs and status reports it as CRITICAL.
	if os.Geteuid() == 0 {
		for _, f := range firewall.Preflight(ctx, cfg.Firewall) {
			fmt.Fprintf(os.Stderr, "host: %s: %s: %s\n", f.Level, f.Subsystem, f.Msg)
		}
	}
	fmt.Printf("%s: OK\n", g.config)
	return 0
}

// socketFor picks the socket: --socket, else the config's, else the default.
func socketFor(g *globals) string {
	if g.socket != "" {
		return g.socket
	}
	if cfg, err := config.Load(g.config); err == nil {
		return cfg.Agent.Socket
	}
	return config.Defaults().Agent.Socket
}

func cmdStatus(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the full status document as JSON")
	configFlag(fs, g)
	if fs.Parse(args) != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := agent.NewClient(socketFor(g)).Status(ctx)
	if err != nil {
		if *asJSON {
			b, _ := json.Marshal(map[string]any{"overall": health.Unknown, "error": err.Error()})
			fmt.Println(string(b))
		} else {
			fmt.Printf("zguard: UNKNOWN: %v\n", err)
		}
		return int(health.Unknown)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Println(string(b))
	} else {
		agent.WriteHuman(os.Stdout, st)
	}
	return int(st.Overall)
}

func cmdReload(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	configFlag(fs, g)
	if fs.Parse(args) != nil {
		return 2
	}
	res, err := agent.NewClient(socketFor(g)).Reload(ctx)
	if err != nil {
		return exitErr(3, err)
	}
	for _, w := range res.Warnings {
		fmt.Printf("warning: %s\n", w)
	}
	if !res.OK {
		fmt.Printf("reload failed; the previous config stays in force:\n%s\n", res.Error)
		for _, c := range res.Changes {
			fmt.Printf("  %s\n", c)
		}
		return 1
	}
	fmt.Printf("reloaded in %s:\n", res.Took)
	for _, c := range res.Changes {
		fmt.Printf("  %s\n", c)
	}
	return 0
}
