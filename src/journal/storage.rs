//! The storage seam: the few file operations a journal makes, on a real directory
//! ([`Disk`]) or, in tests, on a simulated disk that loses what was not synced.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A directory of journal files.
pub(crate) trait Storage: Send + Sync {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole content of `name`.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Creates `name` empty (replacing any file of that name) for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn Append>>;
    /// [`create`](Storage::create) for a segment: the file may be filled with zeros ahead of
    /// what is appended (see [`Disk::open`]); recovery reads zeros after the last record as
    /// the end, and [`Append::seal`] cuts them off.
    fn create_segment(&self, name: &str) -> io::Result<Box<dyn Append>> {
        self.create(name)
    }
    /// Cuts `name` to `len` bytes and syncs it.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Where `name` is, for messages.
    fn path(&self, name: &str) -> PathBuf;
}

/// A file being appended to.
pub(crate) trait Append: Send {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`: what was appended is on disk.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts off whatever the file holds past what was appended (for the next `sync`).
    fn seal(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The name of the lock file in a journal directory.
pub(crate) const LOCK: &str = "LOCK";

/// A real directory, held locked (`flock`) for as long as this lives: the kernel lets go of
/// the lock when the process ends however it ends, so a SIGKILLed server never blocks the
/// next start.
pub(crate) struct Disk {
    dir: PathBuf,
    _lock: File,
    /// Zeros written ahead of a segment's end (0: none).
    zero_ahead: u64,
}

/// Why a journal directory could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Another process holds the lock.
    Locked,
    Io(PathBuf, &'static str, io::Error),
}

impl Disk {
    /// Creates `dir` if needed and locks it. Segments get `zero_ahead` bytes of zeros
    /// written (and synced) ahead of their end at a time: a later `fdatasync` of data
    /// written over them then changes no file size, so the filesystem need not commit its
    /// own journal for it. On ext4 under load that makes a sync about a quarter faster
    /// (BENCHMARKS.md), which is what `--fsync always` waits for.
    pub(crate) fn open(dir: &Path, zero_ahead: u64) -> Result<Disk, OpenError> {
        fs::create_dir_all(dir).map_err(|e| OpenError::Io(dir.to_owned(), "creation", e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| OpenError::Io(lock_path.clone(), "opening", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(OpenError::Locked),
            Err(TryLockError::Error(e)) => return Err(OpenError::Io(lock_path, "locking", e)),
        }
        Ok(Disk {
            dir: dir.to_owned(),
            _lock: lock,
            zero_ahead,
        })
    }
}

struct DiskFile(File);

impl Append for DiskFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// A segment written over zeros laid down ahead of it.
struct ZeroedFile {
    file: File,
    /// Where the next append goes.
    end: u64,
    /// Where the zeros end (the file's size).
    zeroed: u64,
    ahead: u64,
}

/// Whether `e` says the disk (or the user's quota) is full.
fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A block of zeros to write ahead with.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl ZeroedFile {
    /// Writes zeros from where they end to `target`.
    fn zero_to(&mut self, target: u64) -> io::Result<()> {
        let mut at = self.zeroed;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

impl Append for ZeroedFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.end + bytes.len() as u64;
        if end > self.zeroed && self.ahead > 0 {
            let target = end + self.ahead;
            match self.zero_to(target) {
                Ok(()) => {
                    // The size change synced now, once per extension, not by the commits
                    // after it. A sync error is final, as every sync error is.
                    self.file.sync_data()?;
                    self.zeroed = target;
                }
                // No room for zeros: the records may still fit, written the plain way from
                // now on (whether they do, the write below says). Any other error is final.
                Err(e) if is_full(&e) => {
                    self.file.set_len(self.zeroed)?;
                    self.ahead = 0;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(bytes, self.end)?;
        self.end = end;
        self.zeroed = self.zeroed.max(end);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn seal(&mut self) -> io::Result<()> {
        if self.zeroed > self.end {
            self.file.set_len(self.end)?;
            self.zeroed = self.end;
        }
        Ok(())
    }
}

impl Storage for Disk {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(self.dir.join(name))?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn Append>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(DiskFile(file)))
    }

    fn create_segment(&self, name: &str) -> io::Result<Box<dyn Append>> {
        if self.zero_ahead == 0 {
            return self.create(name);
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(ZeroedFile {
            file,
            end: 0,
            zeroed: 0,
            ahead: self.zero_ahead,
        }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.dir.join(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))] // the fuzz target uses only part of it
pub(crate) mod sim {
    //! A simulated disk for power-loss tests: each file has the bytes written and the bytes
    //! synced, and the directory has the entries it shows and those a directory sync made
    //! durable. [`SimDisk::crash_image`] is what a power cut leaves.

    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use crate::sync::lock;

    #[derive(Default, Clone)]
    struct Content {
        written: Vec<u8>,
        synced: usize,
    }

    #[derive(Default)]
    struct State {
        /// File ids by name, as the directory shows them now and as synced.
        names: HashMap<String, usize>,
        durable_names: HashMap<String, usize>,
        files: Vec<Content>,
        syncs: u64,
        /// Fail every write and sync from this sync count on (an injected EIO).
        fail_from: Option<u64>,
        /// Called at every sync point with the image a crash there would leave.
        images: Vec<Image>,
        record_images: bool,
    }

    /// What a crash leaves: files by name with their durable bytes, plus the bytes written
    /// after the last sync, which a crash may or may not keep.
    #[derive(Clone, Debug)]
    pub(crate) struct Image {
        pub(crate) at_sync: u64,
        pub(crate) files: Vec<(String, Vec<u8>, Vec<u8>)>,
    }

    /// A simulated directory, shared by clones.
    #[derive(Clone, Default)]
    pub(crate) struct SimDisk(Arc<Mutex<State>>);

    impl SimDisk {
        /// A disk holding `files` (name, bytes), all durable.
        pub(crate) fn from_files(files: &[(String, Vec<u8>)]) -> SimDisk {
            let disk = SimDisk::default();
            {
                let mut s = lock(&disk.0);
                for (name, bytes) in files {
                    let id = s.files.len();
                    s.files.push(Content {
                        written: bytes.clone(),
                        synced: bytes.len(),
                    });
                    s.names.insert(name.clone(), id);
                    s.durable_names.insert(name.clone(), id);
                }
            }
            disk
        }

        /// Keeps the crash image of every sync point from now on.
        pub(crate) fn record_images(&self) {
            lock(&self.0).record_images = true;
        }

        /// The crash images recorded so far.
        pub(crate) fn images(&self) -> Vec<Image> {
            lock(&self.0).images.clone()
        }

        /// How many syncs happened.
        pub(crate) fn syncs(&self) -> u64 {
            lock(&self.0).syncs
        }

        /// Every write and sync fails once `syncs` syncs happened.
        pub(crate) fn fail_from_sync(&self, syncs: u64) {
            lock(&self.0).fail_from = Some(syncs);
        }

        /// The files as the directory shows them now (what a process crash leaves).
        pub(crate) fn files(&self) -> Vec<(String, Vec<u8>)> {
            let s = lock(&self.0);
            let mut out: Vec<_> = s
                .names
                .iter()
                .map(|(n, &id)| (n.clone(), s.files[id].written.clone()))
                .collect();
            out.sort();
            out
        }

        fn image(s: &State) -> Image {
            let mut files: Vec<_> = s
                .durable_names
                .iter()
                .map(|(n, &id)| {
                    let c = &s.files[id];
                    (
                        n.clone(),
                        c.written[..c.synced].to_vec(),
                        c.written[c.synced..].to_vec(),
                    )
                })
                .collect();
            files.sort();
            Image {
                at_sync: s.syncs,
                files,
            }
        }

        fn sync_point(s: &mut State) -> io::Result<()> {
            if s.fail_from.is_some_and(|f| s.syncs >= f) {
                return Err(io::Error::other("injected EIO"));
            }
            if s.record_images {
                let image = SimDisk::image(s);
                s.images.push(image);
            }
            s.syncs += 1;
            Ok(())
        }
    }

    struct SimFile {
        disk: SimDisk,
        id: usize,
    }

    impl Append for SimFile {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut s = lock(&self.disk.0);
            if s.fail_from.is_some_and(|f| s.syncs >= f) {
                return Err(io::Error::other("injected EIO"));
            }
            s.files[self.id].written.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut s = lock(&self.disk.0);
            SimDisk::sync_point(&mut s)?;
            let c = &mut s.files[self.id];
            c.synced = c.written.len();
            Ok(())
        }
    }

    fn missing(name: &str) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
    }

    impl Storage for SimDisk {
        fn list(&self) -> io::Result<Vec<String>> {
            Ok(lock(&self.0).names.keys().cloned().collect())
        }

        fn read(&self, name: &str) -> io::Result<Vec<u8>> {
            let s = lock(&self.0);
            let id = *s.names.get(name).ok_or_else(|| missing(name))?;
            Ok(s.files[id].written.clone())
        }

        fn create(&self, name: &str) -> io::Result<Box<dyn Append>> {
            let mut s = lock(&self.0);
            let id = s.files.len();
            s.files.push(Content::default());
            s.names.insert(name.to_owned(), id);
            Ok(Box::new(SimFile {
                disk: self.clone(),
                id,
            }))
        }

        fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
            let mut s = lock(&self.0);
            SimDisk::sync_point(&mut s)?;
            let id = *s.names.get(name).ok_or_else(|| missing(name))?;
            let c = &mut s.files[id];
            c.written.truncate(len as usize);
            c.synced = c.written.len();
            Ok(())
        }

        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            let mut s = lock(&self.0);
            let id = s.names.remove(from).ok_or_else(|| missing(from))?;
            s.names.insert(to.to_owned(), id);
            Ok(())
        }

        fn remove(&self, name: &str) -> io::Result<()> {
            let mut s = lock(&self.0);
            s.names
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| missing(name))
        }

        fn sync_dir(&self) -> io::Result<()> {
            let mut s = lock(&self.0);
            SimDisk::sync_point(&mut s)?;
            s.durable_names = s.names.clone();
            Ok(())
        }

        fn path(&self, name: &str) -> PathBuf {
            PathBuf::from("sim").join(name)
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_segment_is_written_over_zeros_laid_ahead_and_sealed_to_its_records() {
        let dir =
            TempDir(std::env::temp_dir().join(format!("distq-zeroed-{}", std::process::id())));
        let disk = Disk::open(&dir.0, 4096).unwrap();
        let mut file = disk.create_segment("seg").unwrap();
        let mut written = Vec::new();
        for n in 0..100u8 {
            let record = vec![n | 1; 97];
            file.append(&record).unwrap();
            written.extend_from_slice(&record);
        }
        file.sync().unwrap();
        let on_disk = disk.read("seg").unwrap();
        assert!(on_disk.len() > written.len(), "zeros ahead of the records");
        assert!(on_disk.len() <= written.len() + 4096 + 97);
        assert_eq!(&on_disk[..written.len()], &written[..]);
        assert!(on_disk[written.len()..].iter().all(|&b| b == 0));
        file.seal().unwrap();
        file.sync().unwrap();
        assert_eq!(
            disk.read("seg").unwrap(),
            written,
            "sealed: the records only"
        );
    }

    #[test]
    fn without_zeros_ahead_a_segment_is_a_plain_file() {
        let dir = TempDir(std::env::temp_dir().join(format!("distq-plain-{}", std::process::id())));
        let disk = Disk::open(&dir.0, 0).unwrap();
        let mut file = disk.create_segment("seg").unwrap();
        file.append(b"abc").unwrap();
        file.sync().unwrap();
        assert_eq!(disk.read("seg").unwrap(), b"abc");
    }
}
