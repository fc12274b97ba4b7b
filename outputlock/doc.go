// Package outputlock keeps the ComfyUI output folder's owner and modes
// locked, continuously, without ever following a symlink out of it.
//
// The folder is written by the container, so a root process walking it is
// a classic privilege-escalation target: a workflow that plants
// output/x -> /etc/shadow, or swaps a subfolder for a symlink while the
// walk is under way, gets root to chown or chmod the target. The walker
// (walk.go) therefore never resolves a path: it opens the root with
// O_NOFOLLOW|O_DIRECTORY, each subfolder relative to its parent's
// descriptor the same way, and changes other entries only through an
// O_PATH|O_NOFOLLOW handle whose fstat it checks first (O_PATH never opens
// the file, so FIFOs cannot block it and no device driver runs). What is
// changed is exactly the inode that was examined, inside the tree.
//
// The policy (policy.go, pure) says what to do with one entry: directories
// and files get the wanted owner and mode (set-id bits are stripped);
// symlinks are reported, or removed with symlinks = "remove", and never
// chmodded; a non-directory with more than one link that is not already as
// wanted may be a hard link to a file outside, so it is reported and left
// alone; FIFOs, sockets and device nodes are reported and locked through
// the handle. Mount points inside the folder are reported, not crossed.
//
// With watch = true an inotify instance (watch.go) watches every directory
// (added through /proc/self/fd, so the watch lands on the inode that was
// opened) and fixes entries as they are created, moved in or changed; a new
// folder is watched and then listed, so files written into it before the
// watch existed are found too. A queue overflow or a moved folder starts a
// full pass; the folder itself going away drops every watch and Run polls
// for it four times a second. The periodic full pass (full_pass_interval)
// is the safety net for anything missed.
//
// A pass streams: directories are read in 16 KiB getdents batches, depth
// first, holding one descriptor per level, so memory does not grow with
// the folder. A pass over a folder already in order makes no writes: one
// fstatat per entry, plus open/fstat/getdents/close per directory; every
// system call is counted (Counts) so tests and bench/outputlock.sh can
// assert it.
//
// Enabled = false makes the lock stand down: it stops watching and touches
// nothing until enabled again.
package outputlock
