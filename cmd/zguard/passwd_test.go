package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/zguard/zguard/gateway/credfile"
)

func TestCheckPassword(t *testing.T) {
	tests := map[string]struct {
		user, pw string
		ok       bool
	}{
		"long random":       {"alice", "tR7#kq2-Lm9vXz", true},
		"too short":         {"alice", "short-pw-11", false},
		"twelve exactly":    {"alice", "abcdefghijk!", true},
		"common":            {"alice", "Password1234", false},
		"one character":     {"alice", "zzzzzzzzzzzzzz", false},
		"user name twice":   {"alicealice", "alicealice12", false},
		"multibyte counted": {"alice", "ééééééééééé", false},
		"over 72 bytes":     {"alice", strings.Repeat("ab", 40), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if err := checkPassword(tc.user, tc.pw); (err == nil) != tc.ok {
				t.Errorf("checkPassword(%q) = %v, want ok=%v", tc.pw, err, tc.ok)
			}
		})
	}
}

// TestPasswdAndTokenCommands runs the real binary: the password comes from
// stdin (no tty), the files are written 0600, and the results parse and verify.
func TestPasswdAndTokenCommands(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "zguard")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building: %v\n%s", err, out)
	}
	dir := t.TempDir()
	ht := filepath.Join(dir, "htpasswd")
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out strings.Builder
		cmd.Stdout = &out
		cmd.Stderr = &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := run("tR7#kq2-Lm9vXz\n", "passwd", "alice", "-f", ht, "-cost", "4"); err != nil {
		t.Fatalf("passwd alice: %v\n%s", err, out)
	}
	if out, err := run("another-Long-pw-9\n", "passwd", "-f", ht, "-cost", "4", "bob"); err != nil {
		t.Fatalf("passwd bob: %v\n%s", err, out)
	}
	if out, err := run("short\n", "passwd", "carol", "-f", ht); err == nil || !strings.Contains(out, "too short") {
		t.Fatalf("short password accepted: %v\n%s", err, out)
	}
	if out, err := run("password1234\n", "passwd", "carol", "-f", ht); err == nil || !strings.Contains(out, "common") {
		t.Fatalf("common password accepted: %v\n%s", err, out)
	}
	if out, err := run("second-Long-pw-77\n", "passwd", "alice", "-f", ht, "-cost", "4"); err != nil {
		t.Fatalf("changing alice: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(ht)
	users, err := credfile.ParseHtpasswd(data)
	if err != nil || len(users) != 2 {
		t.Fatalf("htpasswd %q: %v", data, err)
	}
	if !strings.HasPrefix(string(users[0].Hash), "$2y$04$") || bcrypt.CompareHashAndPassword(users[0].Hash, []byte("second-Long-pw-77")) != nil {
		t.Errorf("alice's entry %q does not verify the new password", users[0].Hash)
	}
	if fi, _ := os.Stat(ht); fi.Mode().Perm() != 0o600 {
		t.Errorf("htpasswd mode %v, want 0600", fi.Mode().Perm())
	}

	tf := filepath.Join(dir, "tokens")
	cmd := exec.Command(bin, "token", "ci", "-f", tf)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	tok := strings.TrimSpace(string(out))
	stored, _ := os.ReadFile(tf)
	toks, err := credfile.ParseTokens(stored)
	if err != nil || len(toks) != 1 || toks[0].Digest != credfile.DigestToken(tok) {
		t.Fatalf("tokens file %q does not hold the digest of the printed token: %v", stored, err)
	}
	if strings.Contains(string(stored), tok) {
		t.Fatal("tokens file holds the plain token")
	}
	os.WriteFile(ht, []byte("alice:plain\n"), 0o600)
	if out, err := run("tR7#kq2-Lm9vXz\n", "passwd", "bob", "-f", ht); err == nil || !strings.Contains(out, ":1:") {
		t.Fatalf("malformed htpasswd was edited: %v\n%s", err, out)
	}
}
