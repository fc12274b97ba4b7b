package gateway

import (
	"os"
	"syscall"
)

// inode returns a file's inode number, so a file replaced by rename with the
// same size and second is still noticed.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
