// Package credfile reads and writes the gateway's two credential files: an
// htpasswd file of bcrypt entries (as `htpasswd -B` writes them) and a
// tokens file that holds only SHA-256 digests of API tokens.
//
// Parsing is pure (bytes in, entries or a line-numbered error out) so the
// gateway can refuse a malformed file and keep the old one in force; writing
// is atomic (temporary file, fsync, rename) so a reader never sees half a file.
package credfile

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// LineError is a problem on one line of a credential file.
type LineError struct {
	File string // may be empty when parsing bytes
	Line int
	Msg  string
}

func (e *LineError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// User is one htpasswd entry.
type User struct {
	Name string
	Hash []byte // bcrypt, "$2a$", "$2b$" or "$2y$"
}

// Token is one tokens-file entry: a name and the SHA-256 digest of the token.
type Token struct {
	Name   string
	Digest [sha256.Size]byte
}

// TokenPrefix starts every token zguard generates, so leaked tokens are easy
// to recognise in logs and secret scanners.
const TokenPrefix = "zgt_"

// ParseHtpasswd parses htpasswd text. Blank lines and lines starting with
// '#' are skipped; every other line must be "name:bcrypt-hash". Other hash
// schemes (MD5 "$apr1$", "{SHA}", crypt) are refused: they are too cheap to
// protect a public door.
func ParseHtpasswd(data []byte) ([]User, error) {
	var users []User
	seen := map[string]int{}
	err := eachLine(data, func(n int, line string) error {
		name, hash, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("want \"name:bcrypt-hash\", found no ':'")
		}
		if err := checkName(name); err != nil {
			return err
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("user %q already defined on line %d", name, prev)
		}
		if !isBcrypt(hash) {
			return fmt.Errorf("user %q: only bcrypt hashes ($2y$, $2b$, $2a$) are accepted (use `zguard passwd` or `htpasswd -B`)", name)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || len(hash) != 60 {
			return fmt.Errorf("user %q: malformed bcrypt hash", name)
		}
		seen[name] = n
		users = append(users, User{Name: name, Hash: []byte(hash)})
		return nil
	})
	return users, err
}

// ParseTokens parses tokens-file text: lines "name:sha256:<64 hex digits>",
// blank lines and '#' comments.
func ParseTokens(data []byte) ([]Token, error) {
	var toks []Token
	seen := map[string]int{}
	digests := map[[sha256.Size]byte]string{}
	err := eachLine(data, func(n int, line string) error {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("want \"name:sha256:<hex digest>\", found no ':'")
		}
		if err := checkName(name); err != nil {
			return err
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("token %q already defined on line %d", name, prev)
		}
		algo, hexd, ok := strings.Cut(rest, ":")
		if !ok || algo != "sha256" {
			return fmt.Errorf("token %q: want \"sha256:<hex digest>\" (plain tokens are never stored; use `zguard token`)", name)
		}
		var t Token
		if len(hexd) != 2*sha256.Size {
			return fmt.Errorf("token %q: digest must be %d hex digits, got %d", name, 2*sha256.Size, len(hexd))
		}
		if _, err := hex.Decode(t.Digest[:], []byte(hexd)); err != nil {
			return fmt.Errorf("token %q: digest is not hex", name)
		}
		if other, dup := digests[t.Digest]; dup {
			return fmt.Errorf("token %q has the same digest as %q", name, other)
		}
		t.Name = name
		seen[name] = n
		digests[t.Digest] = name
		toks = append(toks, t)
		return nil
	})
	return toks, err
}

// ReadHtpasswd reads and parses an htpasswd file; line errors name the file.
func ReadHtpasswd(path string) ([]User, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading htpasswd: %w", err)
	}
	u, err := ParseHtpasswd(data)
	return u, withFile(err, path)
}

// ReadTokens reads and parses a tokens file; line errors name the file.
func ReadTokens(path string) ([]Token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading tokens: %w", err)
	}
	t, err := ParseTokens(data)
	return t, withFile(err, path)
}

func withFile(err error, path string) error {
	if le, ok := err.(*LineError); ok {
		le.File = path
	}
	return err
}

// DigestToken returns the digest stored for a token.
func DigestToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// NewToken returns a fresh token holding 256 random bits.
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// HashPassword returns a bcrypt hash in the "$2y$" form Apache's htpasswd
// writes (the algorithm is the same as "$2a$"/"$2b$" for these inputs).
func HashPassword(password string, cost int) ([]byte, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return nil, fmt.Errorf("hashing password: %w", err)
	}
	if bytes.HasPrefix(h, []byte("$2a$")) || bytes.HasPrefix(h, []byte("$2b$")) {
		h[2] = 'y'
	}
	return h, nil
}

// HtpasswdLine is the htpasswd line for a user.
func HtpasswdLine(name string, hash []byte) string { return name + ":" + string(hash) }

// TokenLine is the tokens-file line for a token.
func TokenLine(name string, digest [sha256.Size]byte) string {
	return name + ":sha256:" + hex.EncodeToString(digest[:])
}

// SetEntry returns data with the entry for name replaced by line, or line
// appended when name has none. Comments and other entries are kept as they are.
func SetEntry(data []byte, name, line string) []byte {
	var out []string
	replaced := false
	text := strings.TrimRight(string(data), "\n")
	if text != "" {
		for _, l := range strings.Split(text, "\n") {
			t := strings.TrimSpace(l)
			if n, _, ok := strings.Cut(t, ":"); ok && !strings.HasPrefix(t, "#") && n == name {
				if !replaced {
					out = append(out, line)
					replaced = true
				}
				continue
			}
			out = append(out, l)
		}
	}
	if !replaced {
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

// WriteAtomic replaces path with data: a temporary file in the same
// directory, written with mode, synced, then renamed over path.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("creating temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("setting mode of %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func eachLine(data []byte, fn func(n int, line string) error) error {
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(i+1, line); err != nil {
			return &LineError{Line: i + 1, Msg: err.Error()}
		}
	}
	return nil
}

// CheckName reports whether name can be a user or token name.
func CheckName(name string) error { return checkName(name) }

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if len(name) > 255 {
		return fmt.Errorf("name longer than 255 bytes")
	}
	for _, r := range name {
		if r == ':' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("name %q contains ':', a space or a control character", name)
		}
	}
	return nil
}

func isBcrypt(h string) bool {
	return strings.HasPrefix(h, "$2y$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2a$")
}
