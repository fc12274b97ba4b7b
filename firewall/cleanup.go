package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
)

// Cleanup removes every chain, jump, set and raw-table rule that zguard made
// with the given chain prefix, for IPv4 and IPv6, and nothing else: rules
// are recognised by their exact chain and set names (PREFIX-INPUT, ...,
// PREFIX-allow4, ...) and by the comment on the one jump zguard may add to
// FORWARD. A DOCKER-USER chain is deleted only when zguard created it (its
// marked jump was the only way in) and it is empty. Tables left with nothing
// but empty built-in chains at ACCEPT are deleted on the nf_tables backend,
// so the ruleset reads as it did before zguard. Running it twice is fine.
// It is what `zguard cleanup` runs; the agent's stop never calls it.
func Cleanup(ctx context.Context, prefix string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if err := validPrefix(prefix); err != nil {
		return err
	}
	return cleanup(ctx, execCommander{}, prefix, log)
}

func cleanup(ctx context.Context, cmd commander, prefix string, log *slog.Logger) error {
	n := namesFor(prefix)
	version, err := cmd.run(ctx, nil, "iptables", "--version")
	if errors.Is(err, exec.ErrNotFound) {
		// No iptables on this host: zguard never installed anything here.
		log.Info("iptables not installed; no firewall rules to remove")
		return nil
	}
	backend := parseBackend(string(version))
	var errs []error
	for _, fam := range []family{ipv4, ipv6} {
		removed, err := removeFamily(ctx, cmd, n, fam, backend == "iptables-nft")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if removed > 0 {
			log.Info("removed firewall rules", "family", fam, "prefix", prefix, "changes", removed)
		}
	}
	if err := destroySets(ctx, cmd, n.setNames()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeFamily removes zguard's objects from one family's tables and
// returns how many commands that took.
func removeFamily(ctx context.Context, cmd commander, n names, fam family, nft bool) (int, error) {
	out, err := cmd.run(ctx, nil, fam.tool()+"-save")
	if err != nil {
		if fam == ipv6 {
			return 0, nil // no IPv6 tables on this host: nothing of ours either
		}
		return 0, fmt.Errorf("reading %s rules: %w", fam, err)
	}
	have, err := parseSave(out)
	if err != nil {
		return 0, err
	}
	script, touched := removalScript(have, n)
	lines := 0
	for _, c := range touched {
		lines += c
	}
	if lines > 0 {
		if _, err := cmd.run(ctx, script, fam.tool()+"-restore", "-w", "--noflush"); err != nil {
			return 0, fmt.Errorf("removing %s rules: %w", fam, err)
		}
	}
	if nft {
		deleted, err := dropPristineTables(ctx, cmd, fam, touched)
		lines += deleted
		if err != nil {
			return lines, err
		}
	}
	return lines, nil
}

// removalScript is the iptables-restore input that unhooks and deletes
// zguard's chains; touched counts its commands per table.
func removalScript(have tables, n names) ([]byte, map[string]int) {
	ours := map[string]bool{}
	for _, k := range n.chainKeys() {
		_, ch, _ := strings.Cut(k, "/")
		ours[ch] = true
	}
	var b strings.Builder
	touched := map[string]int{}
	for _, tname := range []string{"raw", "filter"} {
		t := have[tname]
		if t == nil {
			continue
		}
		var dels, flush, del []string
		removedMark := false
		for _, parent := range t.order {
			if ours[parent] {
				flush = append(flush, "-F "+parent)
				del = append(del, "-X "+parent)
				continue
			}
			for _, r := range t.chains[parent] {
				marked := strings.Contains(r.spec, comment(n.dockerUserMark))
				if ours[target(r.spec)] || marked {
					dels = append(dels, "-D "+parent+" "+r.spec)
					removedMark = removedMark || marked
				}
			}
		}
		if tname == "filter" && removedMark && dockerUserOnlyOurs(t, n, ours) {
			del = append(del, "-X DOCKER-USER")
		}
		all := slices.Concat(dels, flush, del)
		if len(all) == 0 {
			continue
		}
		b.WriteString("*" + tname + "\n")
		for _, l := range all {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
		touched[tname] = len(all)
	}
	return []byte(b.String()), touched
}

// dockerUserOnlyOurs reports whether DOCKER-USER holds nothing but jumps to
// zguard's chains and is entered only through zguard's marked jump: then
// zguard created it and removing it restores the previous state.
func dockerUserOnlyOurs(t *table, n names, ours map[string]bool) bool {
	rules, ok := t.chains["DOCKER-USER"]
	if !ok {
		return false
	}
	for _, r := range rules {
		if !ours[target(r.spec)] {
			return false
		}
	}
	for _, rs := range t.chains {
		for _, r := range rs {
			if target(r.spec) == "DOCKER-USER" && !strings.Contains(r.spec, comment(n.dockerUserMark)) {
				return false
			}
		}
	}
	return true
}

// dropPristineTables deletes the tables zguard just removed its chains from
// when they now hold nothing (only built-in chains, policy ACCEPT, no
// rules): on nf_tables such a table exists only because something wrote to
// it, here zguard, and an empty table filters exactly like a missing one.
// Tables zguard had nothing in are never touched.
func dropPristineTables(ctx context.Context, cmd commander, fam family, touched map[string]int) (int, error) {
	out, err := cmd.run(ctx, nil, fam.tool()+"-save")
	if err != nil {
		return 0, fmt.Errorf("reading %s rules: %w", fam, err)
	}
	have, err := parseSave(out)
	if err != nil {
		return 0, err
	}
	nftFamily := "ip"
	if fam == ipv6 {
		nftFamily = "ip6"
	}
	deleted := 0
	for _, tname := range []string{"raw", "filter"} {
		t := have[tname]
		if touched[tname] == 0 || t == nil || !pristine(t) {
			continue
		}
		if _, err := cmd.run(ctx, nil, "nft", "delete", "table", nftFamily, tname); err != nil {
			return deleted, fmt.Errorf("deleting empty %s table %s: %w", nftFamily, tname, err)
		}
		deleted++
	}
	return deleted, nil
}

func pristine(t *table) bool {
	for ch, rules := range t.chains {
		if len(rules) > 0 || t.policies[ch] != "ACCEPT" {
			return false
		}
	}
	return true
}

// destroySets destroys the named ipsets that exist.
func destroySets(ctx context.Context, cmd commander, names []string) error {
	out, err := cmd.run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		return nil // no ipset on this host: zguard made no sets
	}
	exist := map[string]bool{}
	for l := range strings.Lines(string(out)) {
		exist[strings.TrimSpace(l)] = true
	}
	var errs []error
	for _, s := range names {
		if !exist[s] {
			continue
		}
		if _, err := cmd.run(ctx, nil, "ipset", "destroy", s); err != nil {
			errs = append(errs, fmt.Errorf("destroying set %s: %w", s, err))
		}
	}
	return errors.Join(errs...)
}
