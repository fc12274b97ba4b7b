package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/firewall"
)

func init() {
	register("cleanup", "remove every firewall chain, jump, set and raw rule zguard made (uninstall)", cmdCleanup)
}

// cmdCleanup removes zguard's firewall objects for one chain prefix: the
// --chain-prefix flag, else the config's firewall.chain_prefix, else the
// default. It runs without the agent and is safe to repeat.
func cmdCleanup(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.StringVar(&g.config, "c", config.DefaultPath, "config file (for firewall.chain_prefix)")
	fs.StringVar(&g.config, "config", config.DefaultPath, "config file (for firewall.chain_prefix)")
	prefix := fs.String("chain-prefix", "", "chain prefix to remove (default: from the config, or "+config.Defaults().Firewall.ChainPrefix+")")
	if fs.Parse(args) != nil {
		return 2
	}
	if *prefix == "" {
		*prefix = config.Defaults().Firewall.ChainPrefix
		cfg, err := config.Load(g.config)
		switch {
		case err == nil:
			*prefix = cfg.Firewall.ChainPrefix
		case errors.Is(err, os.ErrNotExist):
			// No config: the default prefix is the only one zguard used.
		default:
			fmt.Fprintf(os.Stderr, "warning: cannot read %s (%v); removing chain prefix %q\n", g.config, err, *prefix)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := firewall.Cleanup(ctx, *prefix, log); err != nil {
		return exitErr(1, fmt.Errorf("cleaning up firewall rules: %w", err))
	}
	fmt.Printf("removed zguard firewall rules (chain prefix %s)\n", *prefix)
	return 0
}
