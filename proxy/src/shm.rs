//! Triton's system shared memory extension: POSIX shared memory regions a
//! client registers by name (`/dev/shm/KEY`, at an offset, so many bytes),
//! inputs read from and outputs written to them instead of crossing the
//! socket. One registry per process, shared by the HTTP and gRPC listeners
//! (as Triton's). A region stays mapped while a request uses it, so
//! unregistering it mid-request is safe; every bound is checked before a
//! byte is touched.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use bytes::Bytes;
use serde_json::Value;
use switchyard_runtime::tensor::{Parameters, SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION};
use switchyard_runtime::{InferRequest, InferResponse};

use crate::error::Error;

/// Where POSIX shared memory objects live on Linux.
const SHM_DIR: &str = "/dev/shm";

/// One registered region: a shared mapping of `byte_size` bytes at `offset` of the object `key`.
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
    /// Start of the whole mapping (from the object's byte 0) and its length, for munmap.
    base: *mut u8,
    map_len: usize,
}

// SAFETY: the mapping is owned by the Region and unmapped only on drop; all access goes
// through bounds-checked copies. Another process may write the same memory concurrently
// (that is the point of shared memory): what a request reads is whatever the client left there.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly what mmap returned; nothing borrows the mapping now.
        unsafe {
            libc::munmap(self.base.cast(), self.map_len);
        }
    }
}

impl Region {
    /// Maps `key` (a POSIX shm name, `/name`) read-write from its byte 0 to `offset + byte_size`.
    fn map(name: &str, key: &str, offset: u64, byte_size: u64) -> Result<Region, Error> {
        let object = key.strip_prefix('/').unwrap_or(key);
        if object.is_empty() || object.contains('/') || object.starts_with('.') {
            return Err(Error::bad_field(
                "key",
                format!("shared memory key '{key}' is not a POSIX shared memory name (one '/' then a name)"),
            ));
        }
        if byte_size == 0 {
            return Err(Error::bad_field("byte_size", format!("shared memory region '{name}': byte_size must be > 0")));
        }
        let end = offset.checked_add(byte_size).filter(|e| usize::try_from(*e).is_ok()).ok_or_else(|| {
            Error::bad_field("offset", format!("shared memory region '{name}': offset + byte_size overflows"))
        })?;
        let path = std::path::Path::new(SHM_DIR).join(object);
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| {
            Error::bad_field("key", format!("Unable to open shared memory region: '{key}' ({}: {e})", path.display()))
        })?;
        let len =
            file.metadata().map_err(|e| Error::bad_field("key", format!("shared memory key '{key}': {e}")))?.len();
        if end > len {
            return Err(Error::bad_field(
                "byte_size",
                format!(
                    "shared memory region '{name}': offset {offset} + byte_size {byte_size} exceeds the {len} bytes of '{key}'"
                ),
            ));
        }
        let map_len = end as usize;
        // SAFETY: a fresh shared mapping of an open file, of a length within the file; the
        // result is checked for MAP_FAILED before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::bad_field(
                "key",
                format!("cannot map shared memory '{key}': {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(Region { name: name.into(), key: key.into(), offset, byte_size, base: base.cast(), map_len })
    }

    /// The bytes at `offset..offset + size` of the region (not of the object), checked.
    fn range(&self, offset: u64, size: u64, what: &str) -> Result<usize, Error> {
        match offset.checked_add(size) {
            Some(end) if end <= self.byte_size => Ok((self.offset + offset) as usize),
            _ => Err(Error::bad_field(
                what,
                format!(
                    "{what}: shared memory offset {offset} + byte size {size} is outside region '{}' ({} bytes)",
                    self.name, self.byte_size
                ),
            )),
        }
    }

    fn read(&self, offset: u64, size: u64, what: &str) -> Result<Bytes, Error> {
        let start = self.range(offset, size, what)?;
        let mut out = vec![0u8; size as usize];
        // SAFETY: `start + size <= map_len` (checked by `range` against the mapped bounds).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(start), out.as_mut_ptr(), out.len()) };
        Ok(Bytes::from(out))
    }

    fn write(&self, offset: u64, data: &[u8], what: &str) -> Result<(), Error> {
        let start = self.range(offset, data.len() as u64, what)?;
        // SAFETY: as in `read`; the mapping is writable (PROT_WRITE, MAP_SHARED).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(start), data.len()) };
        Ok(())
    }
}

/// The process's registered regions by name.
static REGIONS: LazyLock<RwLock<BTreeMap<String, Arc<Region>>>> = LazyLock::new(Default::default);

/// Registers `name` → `key` at `offset`, `byte_size` bytes.
pub fn register(name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::bad_field("name", "a shared memory region needs a name"));
    }
    let region = Arc::new(Region::map(name, key, offset, byte_size)?);
    let mut regions = REGIONS.write().unwrap_or_else(PoisonError::into_inner);
    if regions.contains_key(name) {
        return Err(Error::bad_field("name", format!("shared memory region '{name}' already in manager")));
    }
    regions.insert(name.into(), region);
    Ok(())
}

/// Unregisters `name`, or every region when `None`. Requests using a region keep it until they end.
pub fn unregister(name: Option<&str>) {
    let mut regions = REGIONS.write().unwrap_or_else(PoisonError::into_inner);
    match name {
        Some(n) => {
            regions.remove(n);
        }
        None => regions.clear(),
    }
}

/// The registered regions (or the one named): name, key, offset, byte size.
pub fn status(name: Option<&str>) -> Result<Vec<Arc<Region>>, Error> {
    let regions = REGIONS.read().unwrap_or_else(PoisonError::into_inner);
    match name {
        None => Ok(regions.values().cloned().collect()),
        Some(n) => regions
            .get(n)
            .map(|r| vec![r.clone()])
            .ok_or_else(|| Error::not_found(format!("Unable to find system shared memory region: '{n}'"))),
    }
}

fn lookup(name: &str, what: &str) -> Result<Arc<Region>, Error> {
    REGIONS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
        .ok_or_else(|| Error::bad_field(what, format!("{what}: Unable to find shared memory region: '{name}'")))
}

/// A tensor's shared memory parameters, removed from `p`: region, byte size, offset.
fn take_params(p: &mut Parameters, what: &str) -> Result<Option<(String, u64, u64)>, Error> {
    let Some(region) = p.remove(SHM_REGION) else {
        return Ok(None);
    };
    let region = match region {
        Value::String(s) => s,
        other => return Err(Error::bad_field(what, format!("{what}: {SHM_REGION} must be a string, got {other}"))),
    };
    let num = |p: &mut Parameters, key: &str, required: bool| -> Result<u64, Error> {
        match p.remove(key) {
            None if !required => Ok(0),
            None => Err(Error::bad_field(what, format!("{what}: {SHM_REGION} needs {key}"))),
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::bad_field(what, format!("{what}: {key} must be a non-negative integer, got {v}"))
            }),
        }
    };
    let size = num(p, SHM_BYTE_SIZE, true)?;
    let offset = num(p, SHM_OFFSET, false)?;
    Ok(Some((region, size, offset)))
}

/// Where one requested output goes.
pub struct OutputTarget {
    name: String,
    region: Arc<Region>,
    size: u64,
    offset: u64,
}

/// Reads every input that names a region from it, and takes the outputs that
/// name one out of the request (backends never see the parameters). Fails when
/// the extension is off and a tensor uses it.
pub fn resolve(req: &mut InferRequest, enabled: bool) -> Result<Vec<OutputTarget>, Error> {
    let uses = req.inputs.iter().any(|t| t.parameters.contains_key(SHM_REGION))
        || req.outputs.iter().any(|o| o.parameters.contains_key(SHM_REGION));
    if !uses {
        return Ok(Vec::new());
    }
    if !enabled {
        return Err(Error::bad_field(
            SHM_REGION,
            "system shared memory is not enabled on this server (server.system_shared_memory: true)",
        ));
    }
    for t in &mut req.inputs {
        let what = format!("input '{}'", t.name);
        let Some((region, size, offset)) = take_params(&mut t.parameters, &what)? else { continue };
        if !t.data.is_empty() {
            return Err(Error::bad_field(&what, format!("{what} has both data and {SHM_REGION}")));
        }
        t.data = lookup(&region, &what)?.read(offset, size, &what)?;
        t.validate().map_err(|e| Error::bad_field(&t.name, format!("{what}: {e}")))?;
    }
    let mut targets = Vec::new();
    for o in &mut req.outputs {
        let what = format!("output '{}'", o.name);
        let Some((region, size, offset)) = take_params(&mut o.parameters, &what)? else { continue };
        let region = lookup(&region, &what)?;
        region.range(offset, size, &what)?;
        targets.push(OutputTarget { name: o.name.clone(), region, size, offset });
    }
    Ok(targets)
}

/// Writes the outputs that go to shared memory into their regions; they stay
/// in the answer with their region and size as parameters, and no data.
pub fn write_outputs(resp: &mut InferResponse, targets: &[OutputTarget]) -> Result<(), Error> {
    for target in targets {
        let Some(t) = resp.outputs.iter_mut().find(|t| t.name == target.name) else { continue };
        let what = format!("output '{}'", t.name);
        let len = t.data.len() as u64;
        if len > target.size {
            return Err(Error::bad_field(
                &what,
                format!(
                    "shared memory size specified with the request for output '{}' ({} bytes) should be at least {len} bytes to hold the results",
                    t.name, target.size
                ),
            ));
        }
        target.region.write(target.offset, &t.data, &what)?;
        t.data = Bytes::new();
        t.parameters.insert(SHM_REGION.into(), Value::from(target.region.name.clone()));
        t.parameters.insert(SHM_BYTE_SIZE.into(), Value::from(len));
        if target.offset != 0 {
            t.parameters.insert(SHM_OFFSET.into(), Value::from(target.offset));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use switchyard_runtime::tensor::RequestedOutput;
    use switchyard_runtime::{DataType, Tensor};

    use super::*;

    fn object(name: &str, len: u64) -> String {
        let key = format!("/switchyard-test-{}-{name}", std::process::id());
        let f = std::fs::File::create(format!("{SHM_DIR}{key}")).unwrap();
        f.set_len(len).unwrap();
        key
    }

    #[test]
    fn inputs_and_outputs_go_through_regions_with_every_bound_checked() {
        let key = object("a", 64);
        register("in", &key, 16, 32).unwrap();
        assert!(register("in", &key, 0, 8).unwrap_err().message.contains("already in manager"));
        assert!(register("big", &key, 40, 32).unwrap_err().message.contains("exceeds the 64 bytes"));
        assert!(register("bad", "/no-such-switchyard-object", 0, 8).is_err());
        assert!(register("bad", "../etc/passwd", 0, 8).is_err());

        let r = lookup("in", "x").unwrap();
        r.write(0, &7i32.to_le_bytes(), "x").unwrap();
        assert!(r.write(30, &[0u8; 4], "x").unwrap_err().message.contains("outside region 'in'"));

        let mut shm_params = Parameters::new();
        shm_params.insert(SHM_REGION.into(), "in".into());
        shm_params.insert(SHM_BYTE_SIZE.into(), 4.into());
        let mut t = Tensor::new("x", DataType::Int32, vec![1], Bytes::new());
        t.parameters = shm_params.clone();
        let mut out_params = shm_params.clone();
        out_params.insert(SHM_OFFSET.into(), 8.into());
        let mut req = InferRequest {
            inputs: vec![t],
            outputs: vec![RequestedOutput { name: "y".into(), parameters: out_params, ..Default::default() }],
            ..Default::default()
        };
        let off = resolve(&mut req.clone(), false).err().expect("refused while off");
        assert!(off.message.contains("not enabled"));
        let targets = resolve(&mut req, true).unwrap();
        assert_eq!(&req.inputs[0].data[..], &7i32.to_le_bytes());
        assert!(req.inputs[0].parameters.is_empty() && req.outputs[0].parameters.is_empty());

        // Unregistered mid-request: the request still holds its region.
        unregister(Some("in"));
        let mut resp = InferResponse {
            outputs: vec![Tensor::new("y", DataType::Int32, vec![1], Bytes::from(9i32.to_le_bytes().to_vec()))],
            ..Default::default()
        };
        write_outputs(&mut resp, &targets).unwrap();
        assert!(resp.outputs[0].in_shared_memory());
        assert_eq!(&r.read(8, 4, "y").unwrap()[..], &9i32.to_le_bytes());
        assert!(status(Some("in")).is_err());
        let too_small = vec![OutputTarget { name: "y".into(), region: r.clone(), size: 2, offset: 0 }];
        let mut resp = InferResponse {
            outputs: vec![Tensor::new("y", DataType::Int32, vec![1], Bytes::from(vec![0u8; 4]))],
            ..Default::default()
        };
        assert!(write_outputs(&mut resp, &too_small).unwrap_err().message.contains("should be at least 4 bytes"));
        std::fs::remove_file(format!("{SHM_DIR}{key}")).unwrap();
    }
}
