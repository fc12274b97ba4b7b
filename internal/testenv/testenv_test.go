package testenv

import (
	"fmt"
	"testing"
)

// recorder stands in for *testing.T to observe what Require does.
type recorder struct {
	testing.TB
	fatal, skipped string
}

func (r *recorder) Helper()                         {}
func (r *recorder) Fatalf(format string, a ...any)  { r.fatal = fmt.Sprintf(format, a...); panic(r) }
func (r *recorder) Skip(a ...any)                   { r.skipped = fmt.Sprint(a...); panic(r) }
func (r *recorder) Skipf(format string, a ...any)   { r.skipped = fmt.Sprintf(format, a...); panic(r) }
func (r *recorder) Fatal(a ...any)                  { r.fatal = fmt.Sprint(a...); panic(r) }
func (r *recorder) Errorf(format string, a ...any)  { r.fatal = fmt.Sprintf(format, a...) }
func (r *recorder) Logf(format string, args ...any) {}

func run(f func(r *recorder)) (r *recorder) {
	r = &recorder{}
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
	}()
	f(r)
	return r
}

// TestUnmetNeedSkipsOrFails checks the CI contract: a missing Docker skips
// normally, and fails under ZGUARD_REQUIRE_PRIVILEGED=1.
func TestUnmetNeedSkipsOrFails(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/zguard-test.sock")
	t.Setenv("ZGUARD_REQUIRE_PRIVILEGED", "")
	r := run(func(r *recorder) { Require(r, Docker) })
	if r.skipped == "" || r.fatal != "" {
		t.Fatalf("without the flag: skipped %q, fatal %q", r.skipped, r.fatal)
	}
	t.Setenv("ZGUARD_REQUIRE_PRIVILEGED", "1")
	r = run(func(r *recorder) { Require(r, Docker) })
	if r.fatal == "" || r.skipped != "" {
		t.Fatalf("with ZGUARD_REQUIRE_PRIVILEGED=1: skipped %q, fatal %q", r.skipped, r.fatal)
	}
	r = run(func(r *recorder) { Require(r, Need("warp-drive")) })
	if r.fatal == "" {
		t.Fatal("an unknown need passed")
	}
}
