package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/gateway/credfile"
)

func init() {
	register("passwd", "set a gateway user's password in the htpasswd file (bcrypt)", cmdPasswd)
	register("token", "create or rotate a gateway API token (printed once, stored hashed)", cmdToken)
}

// minPasswordLen is the shortest password `zguard passwd` accepts: the
// gateway is a public door, and length is what slows offline guessing.
const minPasswordLen = 12

// commonPasswords are refused whatever their length: they top every
// breach list and are the first thing a guesser tries.
var commonPasswords = map[string]bool{
	"password1234": true, "password12345": true, "password123456": true, "passwordpassword": true,
	"123456789012": true, "1234567890123": true, "12345678901234": true, "123456789123": true,
	"qwertyuiop123": true, "qwertyuiopasdf": true, "qwerty123456": true, "1q2w3e4r5t6y": true,
	"iloveyou1234": true, "letmein12345": true, "welcome12345": true, "administrator": true,
	"adminadmin123": true, "admin1234567": true, "changeme1234": true, "trustno11234": true,
	"comfyui12345": true, "comfyui123456": true, "zimage123456": true, "stablediffusion": true,
	"correcthorsebatterystaple": true, "correct horse battery staple": true, "aaaaaaaaaaaa": true,
	"abcdefghijkl": true, "abc123abc123": true, "football1234": true, "baseball1234": true,
	"sunshine1234": true, "princess1234": true, "monkey123456": true, "dragon123456": true,
	"superman1234": true, "starwars1234": true, "master123456": true, "p@ssw0rd1234": true,
	"passw0rd1234": true, "zaq12wsxcde3": true, "1qaz2wsx3edc": true, "asdfghjkl123": true,
}

// checkPassword says why pw is not acceptable for user, or returns nil.
func checkPassword(user, pw string) error {
	if !utf8.ValidString(pw) {
		return errors.New("password is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(pw); n < minPasswordLen {
		return fmt.Errorf("password too short: %d characters, at least %d required", n, minPasswordLen)
	}
	if len(pw) > 72 {
		return errors.New("password longer than 72 bytes: bcrypt would ignore the rest")
	}
	low := strings.ToLower(pw)
	if commonPasswords[low] {
		return errors.New("password is on the list of common passwords")
	}
	if strings.Trim(low, low[:1]) == "" {
		return errors.New("password repeats one character")
	}
	if strings.Contains(low, strings.ToLower(user)) && len(user)*2 > len(pw) {
		return errors.New("password is mostly the user name")
	}
	return nil
}

// cmdPasswd: zguard passwd [-f FILE] [-c CONFIG] [-cost N] USER.
func cmdPasswd(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	file := fs.String("f", "", "htpasswd file (default: the config's gateway.htpasswd)")
	fs.StringVar(&g.config, "c", config.DefaultPath, "config file (for gateway.htpasswd)")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost (10 = ~60 ms per check)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: zguard passwd [-f htpasswd] [-c config] [-cost N] USER\n\nReads the password from the terminal (twice, not echoed) or from stdin's first line.")
		fs.PrintDefaults()
	}
	user, ok := parseNamed(fs, args)
	if !ok {
		return 2
	}
	if err := credfile.CheckName(user); err != nil {
		return exitErr(2, fmt.Errorf("invalid user name: %w", err))
	}
	if *cost < bcrypt.MinCost || *cost > 16 {
		return exitErr(2, fmt.Errorf("cost %d out of range %d..16", *cost, bcrypt.MinCost))
	}
	path := credPath(*file, g.config, func(c config.Gateway) string { return c.Htpasswd })
	pw, err := readPassword(ctx, os.Stdin, os.Stderr)
	if err != nil {
		return exitErr(1, err)
	}
	if err := checkPassword(user, pw); err != nil {
		return exitErr(1, err)
	}
	hash, err := credfile.HashPassword(pw, *cost)
	if err != nil {
		return exitErr(1, err)
	}
	if err := updateCredFile(path, user, credfile.HtpasswdLine(user, hash), func(b []byte) error {
		_, err := credfile.ParseHtpasswd(b)
		return err
	}); err != nil {
		return exitErr(1, err)
	}
	fmt.Fprintf(os.Stderr, "password for %q written to %s (a running gateway picks it up within a second)\n", user, path)
	return 0
}

// cmdToken: zguard token [-f FILE] [-c CONFIG] NAME.
func cmdToken(ctx context.Context, g *globals, args []string) int {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	file := fs.String("f", "", "tokens file (default: the config's gateway.tokens)")
	fs.StringVar(&g.config, "c", config.DefaultPath, "config file (for gateway.tokens)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: zguard token [-f tokens] [-c config] NAME\n\nPrints a new 256-bit token once; only its SHA-256 digest is stored. An existing NAME is rotated.")
		fs.PrintDefaults()
	}
	name, ok := parseNamed(fs, args)
	if !ok {
		return 2
	}
	if err := credfile.CheckName(name); err != nil {
		return exitErr(2, fmt.Errorf("invalid token name: %w", err))
	}
	path := credPath(*file, g.config, func(c config.Gateway) string { return c.Tokens })
	tok, err := credfile.NewToken()
	if err != nil {
		return exitErr(1, err)
	}
	if err := updateCredFile(path, name, credfile.TokenLine(name, credfile.DigestToken(tok)), func(b []byte) error {
		_, err := credfile.ParseTokens(b)
		return err
	}); err != nil {
		return exitErr(1, err)
	}
	fmt.Println(tok)
	fmt.Fprintf(os.Stderr, "token %q stored (as its SHA-256 digest) in %s; it is shown only this once.\nUse it as: Authorization: Bearer <token>\n", name, path)
	return 0
}

// parseNamed parses flags that may come before or after the one positional
// argument ("passwd alice -f x" and "passwd -f x alice" both work).
func parseNamed(fs *flag.FlagSet, args []string) (string, bool) {
	if fs.Parse(args) != nil {
		return "", false
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return "", false
	}
	name := rest[0]
	if fs.Parse(rest[1:]) != nil {
		return "", false
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return "", false
	}
	return name, true
}

// credPath picks the file: -f, else the config's key, else the default.
func credPath(flagVal, cfgPath string, key func(config.Gateway) string) string {
	if flagVal != "" {
		return flagVal
	}
	if cfg, err := config.Load(cfgPath); err == nil && key(cfg.Gateway) != "" {
		return key(cfg.Gateway)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "warning: cannot read %s (%v); using the default path\n", cfgPath, err)
	}
	return key(config.Defaults().Gateway)
}

// updateCredFile sets name's line in path, refusing to touch a file that
// does not parse (the error names the line), then checks the result parses.
func updateCredFile(path, name, line string, parse func([]byte) error) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if err := parse(old); err != nil {
		var le *credfile.LineError
		if errors.As(err, &le) {
			le.File = path
		}
		return fmt.Errorf("not changing a malformed file: %w", err)
	}
	data := credfile.SetEntry(old, name, line)
	if err := parse(data); err != nil {
		return fmt.Errorf("updating %s: %w", path, err)
	}
	return credfile.WriteAtomic(path, data, 0o600)
}

// readPassword reads a password: from a terminal with echo off, asking
// twice; otherwise the first line of in.
func readPassword(ctx context.Context, in *os.File, prompt io.Writer) (string, error) {
	fd := int(in.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		line, err := bufio.NewReader(in).ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return "", fmt.Errorf("reading password from stdin: %w", err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return "", fmt.Errorf("turning off terminal echo: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r := bufio.NewReader(in)
		var got [2]string
		for i, p := range []string{"New password: ", "Repeat password: "} {
			fmt.Fprint(prompt, p)
			line, err := r.ReadString('\n')
			fmt.Fprintln(prompt)
			if err != nil {
				ch <- result{err: fmt.Errorf("reading password: %w", err)}
				return
			}
			got[i] = strings.TrimRight(line, "\r\n")
		}
		if got[0] != got[1] {
			ch <- result{err: errors.New("passwords do not match")}
			return
		}
		ch <- result{s: got[0]}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
