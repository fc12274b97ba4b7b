package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/zguard/zguard/gateway/credfile"
)

// authResult is the outcome of checking a request's credentials.
type authResult int

const (
	authNone     authResult = iota // no usable credentials: ask for them, not a failure
	authOK                         // identity established
	authFailed                     // wrong password, unknown user or unknown token
	authOverload                   // the request ended while waiting for a bcrypt slot
)

// credentials is one loaded generation of the htpasswd and tokens files;
// it is immutable once built and swapped whole on reload.
type credentials struct {
	users  map[string][]byte
	tokens []credfile.Token
	// fake is a bcrypt hash of a random password with the cost of the
	// real entries: unknown users are checked against it, so they take as
	// long as a wrong password.
	fake []byte
}

func newCredentials(users []credfile.User, tokens []credfile.Token) (*credentials, error) {
	c := &credentials{users: make(map[string][]byte, len(users)), tokens: tokens}
	cost := 0
	for _, u := range users {
		c.users[u.Name] = u.Hash
		if n, err := bcrypt.Cost(u.Hash); err == nil && n > cost {
			cost = n
		}
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	var pw [18]byte
	_, _ = rand.Read(pw[:])
	fake, err := bcrypt.GenerateFromPassword([]byte(base64.RawStdEncoding.EncodeToString(pw[:])), cost)
	if err != nil {
		return nil, fmt.Errorf("making the unknown-user hash: %w", err)
	}
	c.fake = fake
	return c, nil
}

// authenticator verifies Basic and Bearer credentials. bcrypt work is
// bounded (sem), deduplicated (group) and remembered (cache), so a page load
// of fifty requests costs one bcrypt and a password-guessing flood can use
// at most len(sem) cores.
type authenticator struct {
	// sem holds one token per bcrypt running; Apply may replace it (a new
	// bcrypt_concurrency), so each verification keeps the one it took from.
	sem   atomic.Pointer[chan struct{}]
	group singleflight.Group
	cache *verdictCache
	// bcrypts counts verifications actually run (for status and tests).
	bcrypts atomic.Uint64
}

func newAuthenticator(concurrency, cacheSize int) *authenticator {
	a := &authenticator{cache: newVerdictCache(cacheSize)}
	a.setConcurrency(concurrency)
	return a
}

// setConcurrency bounds parallel bcrypt verifications to n (at least 1).
func (a *authenticator) setConcurrency(n int) {
	if n < 1 {
		n = 1
	}
	if cur := a.sem.Load(); cur != nil && cap(*cur) == n {
		return
	}
	ch := make(chan struct{}, n)
	a.sem.Store(&ch)
}

// check authenticates an Authorization header value against creds and
// returns the identity, whether it came from a token, and the result.
func (a *authenticator) check(ctx context.Context, creds *credentials, header string) (identity string, token bool, res authResult) {
	scheme, rest, _ := strings.Cut(header, " ")
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", false, authFailed
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", false, authFailed
		}
		r := a.checkPassword(ctx, creds, user, pass)
		if r != authOK {
			return user, false, r
		}
		return user, false, authOK
	case strings.EqualFold(scheme, "Bearer"):
		if rest == "" {
			return "", true, authFailed
		}
		if name, ok := creds.matchToken(rest); ok {
			return name, true, authOK
		}
		return "", true, authFailed
	}
	return "", false, authNone
}

// matchToken compares the token's digest with every stored digest in
// constant time (no early exit, no map lookup keyed by the secret).
func (c *credentials) matchToken(token string) (string, bool) {
	d := credfile.DigestToken(token)
	found := -1
	for i := range c.tokens {
		if subtle.ConstantTimeCompare(d[:], c.tokens[i].Digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return c.tokens[found].Name, true
}

// checkPassword verifies user/pass. The cache key covers user, stored hash
// and password, so an edited htpasswd entry invalidates its verdicts and an
// unknown user is a cache miss exactly as often as a wrong password.
func (a *authenticator) checkPassword(ctx context.Context, creds *credentials, user, pass string) authResult {
	hash, known := creds.users[user]
	if !known {
		hash = creds.fake
	}
	h := sha256.New()
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write(hash)
	h.Write([]byte{0})
	h.Write([]byte(pass))
	var key [sha256.Size]byte
	h.Sum(key[:0])

	ok, hit := a.cache.get(key)
	if !hit {
		v, err, _ := a.group.Do(string(key[:]), func() (any, error) {
			if ok, hit := a.cache.get(key); hit {
				return ok, nil
			}
			sem := *a.sem.Load()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return false, ctx.Err()
			}
			a.bcrypts.Add(1)
			ok := bcrypt.CompareHashAndPassword(hash, []byte(pass)) == nil
			<-sem
			a.cache.put(key, ok)
			return ok, nil
		})
		if err != nil {
			return authOverload
		}
		ok = v.(bool)
	}
	if ok && known {
		return authOK
	}
	return authFailed
}

// verdictCache is a bounded map of bcrypt verdicts keyed by a digest of
// (user, hash, password); it evicts the oldest entry first.
type verdictCache struct {
	mu    sync.Mutex
	size  int
	m     map[[sha256.Size]byte]bool
	order [][sha256.Size]byte // ring of keys in insertion order
	next  int
}

func newVerdictCache(size int) *verdictCache {
	if size < 1 {
		size = 1
	}
	return &verdictCache{size: size, m: make(map[[sha256.Size]byte]bool, size)}
}

func (c *verdictCache) get(k [sha256.Size]byte) (ok, hit bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok, hit = c.m[k]
	return ok, hit
}

func (c *verdictCache) put(k [sha256.Size]byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[k]; exists {
		c.m[k] = ok
		return
	}
	if len(c.order) < c.size {
		c.order = append(c.order, k)
	} else {
		delete(c.m, c.order[c.next])
		c.order[c.next] = k
		c.next = (c.next + 1) % c.size
	}
	c.m[k] = ok
}
