//! An array the programs keep as global data (a `.bss.*` section), which they read at a
//! constant address instead of looking it up in a map: the pass-through test's words
//! (FAULTED_PORTS) and the interfaces' roles (IFACES).
//!
//! aya loads such a section as an array map of one element, the whole section, so the only
//! write there is is of the whole value. faultd is the only writer: it keeps what it wrote
//! and writes one element at a time, the others as they were. A packet that reads the
//! value while it is copied sees every other element as it was, and the changing one old or
//! new byte by byte; callers keep their elements such that this is harmless (see each).

use aya::Pod;
use aya::maps::{Array, MapData};

pub struct GlobalArray<T: Pod, const N: usize> {
    section: &'static str,
    map: Array<MapData, [T; N]>,
    /// What faultd last wrote (zeros at load, as the section is).
    written: Box<[T; N]>,
}

/// Why a write failed: the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("writing {section}: {source}")]
pub struct WriteError {
    section: &'static str,
    #[source]
    source: aya::maps::MapError,
}

impl<T: Pod + Default + PartialEq, const N: usize> GlobalArray<T, N> {
    /// The section `name` of the loaded object, taken from it.
    pub fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| anyhow::anyhow!("section {name} is missing from the object"))?;
        Ok(Self {
            section: name,
            map: Array::try_from(map)?,
            written: Box::new([T::default(); N]),
        })
    }

    /// Element `index` as faultd last wrote it (`None` past the end).
    pub fn get(&self, index: usize) -> Option<T> {
        self.written.get(index).copied()
    }

    /// Sets every element to `values`; writes nothing when they already hold them. On
    /// failure the elements keep their old values, in the kernel and here.
    pub fn set_all(&mut self, values: &[T; N]) -> Result<(), WriteError> {
        if *self.written == *values {
            return Ok(());
        }
        self.map.set(0, values, 0).map_err(|source| WriteError {
            section: self.section,
            source,
        })?;
        *self.written = *values;
        Ok(())
    }

    /// Sets element `index` (< N) to `value`; writes nothing when it already holds it. On
    /// failure the element keeps its old value, in the kernel and here.
    pub fn set(&mut self, index: usize, value: T) -> Result<(), WriteError> {
        if self.written[index] == value {
            return Ok(());
        }
        let was = std::mem::replace(&mut self.written[index], value);
        self.map.set(0, &*self.written, 0).map_err(|source| {
            self.written[index] = was;
            WriteError {
                section: self.section,
                source,
            }
        })
    }
}
