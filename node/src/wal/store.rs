//! Where WAL segments and snapshots live: a small trait over one flat directory, so
//! the engine runs on real files in production and in memory in tests, where a
//! simulated crash keeps only what was synced plus a torn piece of the rest.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

/// The suffix of a file [`WalDir::write_atomic`] is writing (renamed into place when
/// complete; a crash can leave one).
pub const UNFINISHED_SUFFIX: &str = ".tmp";

/// The segment being zero-filled for the writer's next roll (never a segment name: a
/// crash can leave one, which the next writer removes).
pub const SPARE_SEGMENT: &str = "wal-spare.tmp";

/// Writes a file's content and returns the header to put over its first bytes
/// ([`WalDir::write_atomic`]).
pub type Fill<'a> = dyn FnMut(&mut dyn Write) -> io::Result<Vec<u8>> + 'a;

/// A flat directory of named files. Names are plain file names, never paths.
pub trait WalDir: Send + Sync + 'static {
    /// File names in the directory, any order.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes of file `name` from byte `at` on: fewer at its end, none past
    /// it. Readers that stop early (catch-up stops where the records end, before a
    /// preallocated segment's zeros) read only what they need.
    fn read_range(&self, name: &str, at: u64, len: usize) -> io::Result<Vec<u8>> {
        Ok(range(&self.read(name)?, at, len).to_vec())
    }
    /// Opens segment `name` for writing from byte `at` on (its valid end, as a scan found
    /// it: a preallocated segment holds zeros after it), creating it empty (durably,
    /// directory entry included) if missing.
    fn open_segment(&self, name: &str, at: u64) -> io::Result<Box<dyn WalFile>>;
    /// Whether this directory preallocates segments ([`WalDir::prepare_spare`]).
    fn preallocates(&self) -> bool {
        false
    }
    /// Writes the spare segment [`SPARE_SEGMENT`]: `len` zero bytes, synced with its
    /// size, so that records later written over them change no file metadata and a
    /// sync writes the records alone (see `wal::writer`). Only where [`Self::preallocates`].
    fn prepare_spare(&self, _len: u64) -> io::Result<()> {
        Err(no_preallocation())
    }
    /// Renames the spare into place as segment `name` (durably) and opens it at byte 0.
    fn install_spare(&self, _name: &str) -> io::Result<Box<dyn WalFile>> {
        Err(no_preallocation())
    }
    /// Cuts `name` to `len` bytes and makes the cut durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces `name` all at once (after a crash it holds the old or the new content)
    /// with what `fill` writes, streamed; the bytes `fill` returns then overwrite the
    /// start of it (a header known only at the end, such as a checksum of the rest).
    fn write_atomic(&self, name: &str, fill: &mut Fill<'_>) -> io::Result<()>;
    /// A human name for messages (the directory path).
    fn describe(&self) -> String;
    /// Moves `names` into the subdirectory `into` (created), keeping their names;
    /// durable once it returns (both directories synced).
    fn move_aside(&self, names: &[String], into: &str) -> io::Result<()>;
    /// Makes everything the directory's files and names hold now durable (`fsync` of
    /// each file, then of the directory). What a node reads back at start may be in
    /// the page cache only — a batch written but not yet synced by a process killed
    /// with `kill -9`, a segment renamed into place just before — and the node answers
    /// from it (an idempotent replay sends the stored order with no sync of its own)
    /// and builds on it: it must not be lost to a power failure after.
    fn sync_all(&self) -> io::Result<()>;
}

/// An open segment: appends, and a sync that makes them durable.
pub trait WalFile: Send {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`: everything appended so far survives a crash.
    fn sync(&mut self) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Real files under one directory.
#[derive(Clone, Debug)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// Uses `path`, creating it if needed. A directory it creates is made durable in
    /// its parent (each level, from the top), so the first synced records cannot lose
    /// their directory's entry to a power failure.
    pub fn create(path: &Path) -> io::Result<Self> {
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .collect();
        fs::create_dir_all(path)?;
        for created in missing.iter().rev() {
            let parent = created
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(parent)?.sync_all()?;
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Uses an existing `path` without creating anything (for offline, read-only tools).
    pub fn existing(path: &Path) -> io::Result<Self> {
        if !path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

/// Up to `len` bytes of `data` from byte `at` on ([`WalDir::read_range`]).
fn range(data: &[u8], at: u64, len: usize) -> &[u8] {
    let from = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
    &data[from..from.saturating_add(len).min(data.len())]
}

fn no_preallocation() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this directory does not preallocate segments",
    )
}

/// Starts writing `len` bytes of `file` from `at` to the disk and waits until they
/// are written (`sync_file_range`): the data, without the file's metadata or a flush
/// of the disk's cache (the `fsync` after does both). Elsewhere than Linux, nothing.
fn write_out(file: &File, at: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (at, len) = (
            i64::try_from(at).map_err(io::Error::other)?,
            i64::try_from(len).map_err(io::Error::other)?,
        );
        // SAFETY: a plain syscall on a descriptor `file` keeps open for the call; no
        // memory is passed.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
    Ok(())
}

/// Bytes a file is sent on to the disk in while it is written ([`write_out`]): small
/// enough that a log `fdatasync` queued behind one waits little (the spare's zeros,
/// [`FsDir::prepare_spare`]; a snapshot, [`FsDir::write_atomic`]).
const WRITE_OUT_PIECE: u64 = 256 << 10;

/// A file being written that sends each [`WRITE_OUT_PIECE`] on to the disk once it is
/// written (`send`: [`write_out`]), so the last `fsync` has little left to write;
/// through a buffer, so `fill`'s small writes stay cheap.
struct WrittenOut<S: FnMut(&File, u64, u64) -> io::Result<()>> {
    out: io::BufWriter<File>,
    /// Bytes taken so far, and of them how many were sent to the disk.
    at: u64,
    sent: u64,
    send: S,
}

impl WrittenOut<fn(&File, u64, u64) -> io::Result<()>> {
    /// `file`, sent on to the disk with [`write_out`].
    fn new(file: File) -> Self {
        WrittenOut {
            out: io::BufWriter::with_capacity(1 << 16, file),
            at: 0,
            sent: 0,
            send: write_out,
        }
    }
}

impl<S: FnMut(&File, u64, u64) -> io::Result<()>> WrittenOut<S> {
    /// The file, with what is still buffered written to it (not yet sent on: the
    /// caller's `fsync` does that).
    fn into_file(self) -> io::Result<File> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

impl<S: FnMut(&File, u64, u64) -> io::Result<()>> Write for WrittenOut<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // What is due goes out before more is taken, so an error here is one for
        // bytes not taken yet, as `Write` has it.
        if self.at - self.sent >= WRITE_OUT_PIECE {
            self.out.flush()?;
            (self.send)(self.out.get_ref(), self.sent, self.at - self.sent)?;
            self.sent = self.at;
        }
        let n = self.out.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl WalDir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path.join(name))
    }

    fn read_range(&self, name: &str, at: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.path.join(name))?;
        file.seek(io::SeekFrom::Start(at))?;
        // Room for a catch-up chunk at most up front; a larger read grows as it goes.
        let mut out = Vec::with_capacity(len.min(1 << 20));
        file.take(len as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    fn open_segment(&self, name: &str, at: u64) -> io::Result<Box<dyn WalFile>> {
        let path = self.path.join(name);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let size = file.metadata()?.len();
        if at > size {
            return Err(io::Error::other(format!(
                "{name}: asked to write at byte {at} of a {size}-byte file"
            )));
        }
        if !existed {
            // A new segment's directory entry must be durable before records in it are acknowledged.
            self.sync_dir()?;
        }
        Ok(Box::new(FsFile { file, len: at }))
    }

    fn preallocates(&self) -> bool {
        true
    }

    /// The zeros go to disk a piece at a time ([`WrittenOut`]) while they are written,
    /// and a last `fsync` makes the file's size durable. Written whole and synced once,
    /// the spare's 16 MiB went to the disk in one burst that the log's `fdatasync`s
    /// queued behind: in a loop of 1 KB log syncs beside a spare being made, 2–6 syncs
    /// got through in its 18–20 ms (the median 1.4–13 ms, the slowest 7.6–13 ms);
    /// with the zeros written out in 256 KiB pieces the spare took 22–28 ms and the log
    /// synced as usual beside it (31–35 syncs, the median 0.17–0.27 ms, the slowest
    /// 3.3–3.9 ms, as slow as the slowest before the spare started).
    fn prepare_spare(&self, len: u64) -> io::Result<()> {
        let path = self.path.join(SPARE_SEGMENT);
        let written = (|| {
            let mut out = WrittenOut::new(File::create(&path)?);
            let zeros = vec![0u8; WRITE_OUT_PIECE as usize];
            let mut left = len;
            while left > 0 {
                let n = left.min(WRITE_OUT_PIECE);
                out.write_all(&zeros[..n as usize])?;
                left -= n;
            }
            out.into_file()?.sync_all()
        })();
        if written.is_err() {
            // A spare cut short (a full disk) must not keep the space the log needs.
            let _ = fs::remove_file(&path);
        }
        written
    }

    fn install_spare(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let path = self.path.join(name);
        fs::rename(self.path.join(SPARE_SEGMENT), &path)?;
        // The new name must be durable before records in it are acknowledged.
        self.sync_dir()?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Box::new(FsFile { file, len: 0 }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path.join(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))?;
        self.sync_dir()
    }

    /// The content goes to the disk a piece at a time while it is written
    /// ([`WrittenOut`]), and the last `fsync` makes the rest and the size durable.
    /// Written whole and synced once, a snapshot (tens of MB at a few hundred thousand
    /// orders) went to the disk in one burst that the log's `fdatasync`s queued behind,
    /// as the spare's zeros did ([`Self::prepare_spare`]). On the benchmark's VM, a
    /// probe syncing 1 KiB every 2 ms beside a 64 MiB file being written: written
    /// whole, 11–17 of its syncs got through during the write and the slowest took
    /// 37.6–42.4 ms; in 256 KiB pieces, 38–43 did and the slowest took 6.3–9.9 ms, the
    /// file 110–129 ms instead of 64–98 (three runs each way). The sequencer's own
    /// snapshot at shutdown and a secondary's snapshot install go the same way; no log
    /// sync runs beside those, so there it only costs time (about half as much again).
    fn write_atomic(&self, name: &str, fill: &mut Fill<'_>) -> io::Result<()> {
        let tmp = self.path.join(format!("{name}{UNFINISHED_SUFFIX}"));
        let written = (|| {
            let mut out = WrittenOut::new(File::create(&tmp)?);
            let header = fill(&mut out)?;
            let mut file = out.into_file()?;
            file.seek(io::SeekFrom::Start(0))?;
            file.write_all(&header)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            // A write cut short (an error, a cancelled snapshot) leaves nothing behind.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, self.path.join(name))?;
        self.sync_dir()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn sync_all(&self) -> io::Result<()> {
        for name in self.list()? {
            // A spare or a snapshot a crash left unfinished is removed, not used.
            if name == SPARE_SEGMENT || name.ends_with(UNFINISHED_SUFFIX) {
                continue;
            }
            // Read-only is enough: Linux syncs a file through any open descriptor.
            File::open(self.path.join(&name))?.sync_all()?;
        }
        self.sync_dir()
    }

    fn move_aside(&self, names: &[String], into: &str) -> io::Result<()> {
        let dest = self.path.join(into);
        fs::create_dir_all(&dest)?;
        for name in names {
            fs::rename(self.path.join(name), dest.join(name))?;
        }
        File::open(&dest)?.sync_all()?;
        self.sync_dir()
    }
}

/// A segment open for writing: records go at `len`, the valid end, whatever the file
/// holds after it (zeros, in a preallocated segment).
struct FsFile {
    file: File,
    len: u64,
}

impl WalFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// One in-memory file: its bytes and how many of them a sync made durable.
#[derive(Clone, Debug, Default)]
pub struct MemFile {
    pub data: Vec<u8>,
    pub synced: usize,
}

/// An in-memory directory for tests. Clones share the same files, so a test keeps a
/// clone, drops the engine, calls [`MemDir::crash`], and reopens on the survivors.
#[derive(Clone, Debug, Default)]
pub struct MemDir {
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
    /// While set, every sync fails (a disk that went bad).
    fail_sync: Arc<AtomicBool>,
    /// While `held`, every sync waits (a slow disk, frozen where a test wants it);
    /// `waiting` counts syncs waiting there.
    hold: Arc<(Mutex<SyncHold>, Condvar)>,
}

#[derive(Debug, Default)]
struct SyncHold {
    held: bool,
    /// Syncs let through while held (`release_one`).
    passes: usize,
    waiting: usize,
}

impl MemDir {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates power loss: each file keeps its synced bytes plus the first
    /// `torn(name, unsynced_len)` of the unsynced ones (clamped).
    pub fn crash(&self, mut torn: impl FnMut(&str, usize) -> usize) {
        for (name, f) in self.files.lock().iter_mut() {
            let unsynced = f.data.len() - f.synced;
            let keep = torn(name, unsynced).min(unsynced);
            f.data.truncate(f.synced + keep);
            f.synced = f.data.len();
        }
    }

    /// Simulates power loss after the unsynced bytes reached the disk out of order:
    /// each file keeps them all but the first `hole`, which read as zeros (the page
    /// written back last was lost). A file with nothing unsynced is kept as it is.
    pub fn crash_out_of_order(&self, hole: usize) {
        for f in self.files.lock().values_mut() {
            let end = f.data.len().min(f.synced + hole);
            f.data[f.synced..end].fill(0);
            f.synced = f.data.len();
        }
    }

    /// A copy of the files as they are now, which the engine writing this one does
    /// not touch.
    pub fn copy(&self) -> MemDir {
        let copy = MemDir::new();
        *copy.files.lock() = self.files.lock().clone();
        copy
    }

    /// Makes every sync fail (`true`) or work again (`false`).
    pub fn set_fail_sync(&self, fail: bool) {
        self.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Makes every sync wait (`true`) until released (`false`).
    pub fn hold_syncs(&self, hold: bool) {
        let (lock, cv) = &*self.hold;
        lock.lock().held = hold;
        cv.notify_all();
    }

    /// Lets one sync through while syncs are held (the next waits again).
    pub fn release_one(&self) {
        let (lock, cv) = &*self.hold;
        lock.lock().passes += 1;
        cv.notify_all();
    }

    /// Syncs waiting on [`MemDir::hold_syncs`] right now.
    pub fn syncs_waiting(&self) -> usize {
        self.hold.0.lock().waiting
    }

    /// Direct access to the files, to damage them.
    pub fn with_files<R>(&self, f: impl FnOnce(&mut BTreeMap<String, MemFile>) -> R) -> R {
        f(&mut self.files.lock())
    }
}

impl WalDir for MemDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.lock().keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.files
            .lock()
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| not_found(name))
    }

    fn read_range(&self, name: &str, at: u64, len: usize) -> io::Result<Vec<u8>> {
        let files = self.files.lock();
        let data = &files.get(name).ok_or_else(|| not_found(name))?.data;
        Ok(range(data, at, len).to_vec())
    }

    fn open_segment(&self, name: &str, at: u64) -> io::Result<Box<dyn WalFile>> {
        let mut files = self.files.lock();
        let f = files.entry(name.to_owned()).or_default();
        if at > f.data.len() as u64 {
            return Err(io::Error::other(format!(
                "{name}: asked to write at byte {at} of a {}-byte file",
                f.data.len()
            )));
        }
        // Records go at `at`; nothing a scan found valid lies past it.
        f.data.truncate(at as usize);
        f.synced = f.synced.min(f.data.len());
        Ok(Box::new(MemAppender {
            dir: self.clone(),
            name: name.to_owned(),
            len: at,
        }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.lock();
        let f = files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.data.truncate(len as usize);
        f.synced = f.data.len();
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn write_atomic(&self, name: &str, fill: &mut Fill<'_>) -> io::Result<()> {
        let mut data = Vec::new();
        let header = fill(&mut data)?;
        let at = data
            .get_mut(..header.len())
            .ok_or_else(|| io::Error::other(format!("{name}: a header longer than the file")))?;
        at.copy_from_slice(&header);
        let f = MemFile {
            synced: data.len(),
            data,
        };
        self.files.lock().insert(name.to_owned(), f);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn sync_all(&self) -> io::Result<()> {
        for f in self.files.lock().values_mut() {
            f.synced = f.data.len();
        }
        Ok(())
    }

    fn move_aside(&self, names: &[String], into: &str) -> io::Result<()> {
        let mut files = self.files.lock();
        for name in names {
            let f = files.remove(name).ok_or_else(|| not_found(name))?;
            files.insert(format!("{into}/{name}"), f);
        }
        Ok(())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

struct MemAppender {
    dir: MemDir,
    name: String,
    len: u64,
}

impl WalFile for MemAppender {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.dir.files.lock();
        let f = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        f.data.extend_from_slice(bytes);
        self.len = f.data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        {
            let (lock, cv) = &*self.dir.hold;
            let mut h = lock.lock();
            h.waiting += 1;
            while h.held && h.passes == 0 {
                cv.wait(&mut h);
            }
            if h.held {
                h.passes -= 1;
            }
            h.waiting -= 1;
        }
        if self.dir.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        let mut files = self.dir.files.lock();
        let f = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        f.synced = f.data.len();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Missing levels are created (and each synced into its parent); an existing
    /// directory is used as it is.
    #[test]
    fn create_makes_every_missing_level() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a").join("b").join("wal");
        FsDir::create(&deep).unwrap();
        assert!(deep.is_dir());
        FsDir::create(&deep).unwrap();
    }

    #[test]
    fn a_spare_is_its_length_of_zeros_whatever_the_pieces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FsDir::create(tmp.path()).unwrap();
        for len in [0, 1, (256 << 10) - 1, 256 << 10, (1 << 20) + 5] {
            dir.prepare_spare(len).unwrap();
            let data = fs::read(tmp.path().join(SPARE_SEGMENT)).unwrap();
            assert_eq!(data.len() as u64, len);
            assert!(data.iter().all(|&b| b == 0), "{len} bytes");
        }
    }

    /// A file written in pieces sent on to the disk as it grows ([`WrittenOut`]) holds
    /// exactly what `fill` wrote, with the header over its start, whatever the sizes
    /// of `fill`'s writes against the piece size; and nothing is left behind.
    #[test]
    fn a_file_written_out_in_pieces_holds_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FsDir::create(tmp.path()).unwrap();
        let piece = WRITE_OUT_PIECE as usize;
        for (len, chunk) in [
            (0, 1),
            (10, 3),
            (piece - 1, 4096),
            (piece, 7),
            (3 * piece + 5, 100_000),
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            dir.write_atomic("f", &mut |out| {
                out.write_all(&[0; 4])?;
                for c in body.chunks(chunk) {
                    out.write_all(c)?;
                }
                Ok(vec![1, 2, 3, 4])
            })
            .unwrap();
            let data = fs::read(tmp.path().join("f")).unwrap();
            assert_eq!(data.len(), len + 4, "{len} bytes in writes of {chunk}");
            assert_eq!(&data[..4], &[1, 2, 3, 4]);
            assert!(data[4..] == body[..], "{len} bytes in writes of {chunk}");
        }
        assert_eq!(dir.list().unwrap(), vec!["f".to_string()]);
    }

    /// What goes to the disk while a file is written: ranges that follow each other
    /// from byte 0, each at least a piece and in the file by then, and under a piece
    /// left for the last `fsync`; whatever the sizes of the writes.
    #[test]
    fn a_file_is_sent_to_the_disk_a_piece_at_a_time_as_it_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let piece = WRITE_OUT_PIECE as usize;
        for (len, chunk) in [
            (piece - 1, 1000),
            (piece, piece),
            (5 * piece + 7, 3000),
            (3 * piece, 2 * piece + 1),
        ] {
            let path = tmp.path().join("f");
            let mut sent = Vec::new();
            let mut out = WrittenOut {
                out: io::BufWriter::with_capacity(1 << 16, File::create(&path).unwrap()),
                at: 0,
                sent: 0,
                send: |file: &File, at: u64, n: u64| {
                    // The range is in the file when it is sent.
                    assert!(file.metadata()?.len() >= at + n);
                    sent.push((at, n));
                    Ok(())
                },
            };
            for c in vec![7u8; len].chunks(chunk) {
                out.write_all(c).unwrap();
            }
            out.flush().unwrap();
            let at = out.at;
            drop(out);
            assert_eq!(at, len as u64);
            let mut next = 0;
            for &(from, n) in &sent {
                assert_eq!(from, next, "{len} in writes of {chunk}: {sent:?}");
                assert!(n >= WRITE_OUT_PIECE, "{len} in writes of {chunk}: {sent:?}");
                next = from + n;
            }
            assert!(
                len as u64 - next < WRITE_OUT_PIECE + chunk as u64,
                "{len} in writes of {chunk}: {sent:?}"
            );
        }
    }
}
