package outputlock

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/zguard/zguard/internal/testenv"
)

// BenchmarkNoopPass measures a pass over 5,000 files already in order
// (the periodic pass's usual case) and reports its system calls and
// writes per entry; bench/outputlock.sh does the 100,000-file version.
func BenchmarkNoopPass(b *testing.B) {
	testenv.Require(b, testenv.Root)
	root := filepath.Join(b.TempDir(), "output")
	for d := 0; d < 10; d++ {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < 500; f++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ComfyUI_%05d_.png", f)), nil, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	l := New(Deps{Log: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	if err := l.Apply(ctx, testCfg(root)); err != nil {
		b.Fatal(err)
	}
	var p Pass
	for b.Loop() {
		var err error
		if p, err = l.Pass(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(p.Syscalls)/float64(p.Entries), "syscalls/entry")
	b.ReportMetric(float64(p.Writes), "writes/pass")
}
