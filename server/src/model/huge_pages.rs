//! Weight memory on transparent huge pages. Decode streams every weight once per step; on
//! 4 KiB pages a 100 MB model spans ~25k pages, far more than the TLB holds, so every step
//! also pays a page walk per 4 KiB read. Quantized weights are therefore copied into
//! 2 MiB-aligned chunks that ask Linux for huge pages (`madvise(MADV_HUGEPAGE)`, honoured when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`; elsewhere, or if
//! refused, they are ordinary memory).
//!
//! Chunks are shared by many small matrices (a layer's matrices are well under 2 MiB each)
//! and freed when the last slice into them drops, so only weights that stay go there: a
//! matrix starts on the heap ([`Storage::Heap`]) and moves once it is final (matrices fused
//! into one would otherwise leave their parts' holes in the chunks).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

const HUGE_PAGE: usize = 2 << 20;
/// Chunk size unless one slice needs more.
const CHUNK: usize = 32 << 20;
/// Slices start on cache lines.
const ALIGN: usize = 64;

struct Chunk {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a chunk's bytes are written once, under `ARENA`'s lock, into a range no slice
// covers yet; afterwards they are only read.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size.next_multiple_of(HUGE_PAGE), HUGE_PAGE).expect("chunk layout");
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // Before the first touch, so the page faults themselves hand out huge pages. A
        // refusal (THP off) leaves ordinary pages: nothing to handle.
        #[cfg(target_os = "linux")]
        // SAFETY: the range is this allocation.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), layout.size(), libc::MADV_HUGEPAGE);
        }
        Self { ptr, layout }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The chunk being filled and how many bytes of it are taken.
static ARENA: Mutex<Option<(Arc<Chunk>, usize)>> = Mutex::new(None);

/// An immutable slice of `T` in huge-page memory.
pub struct HugeSlice<T> {
    chunk: Arc<Chunk>,
    offset: usize,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy> HugeSlice<T> {
    pub fn from_slice(values: &[T]) -> Self {
        assert!(std::mem::align_of::<T>() <= ALIGN);
        let bytes = std::mem::size_of_val(values).max(1);
        let mut arena = ARENA.lock().unwrap_or_else(|e| e.into_inner());
        let fits = arena.as_ref().is_some_and(|(c, used)| used.next_multiple_of(ALIGN) + bytes <= c.layout.size());
        if !fits {
            *arena = Some((Arc::new(Chunk::new(bytes.max(CHUNK))), 0));
        }
        let (chunk, used) = arena.as_mut().expect("a chunk");
        let offset = used.next_multiple_of(ALIGN);
        *used = offset + bytes;
        // SAFETY: `offset..offset + bytes` lies inside the chunk, is aligned for T and no
        // slice covers it yet (`used` only grows, under the lock).
        unsafe {
            let dst = chunk.ptr.as_ptr().add(offset).cast::<T>();
            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, values.len());
        }
        Self { chunk: chunk.clone(), offset, len: values.len(), _t: std::marker::PhantomData }
    }
}

impl<T> std::ops::Deref for HugeSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: written in `from_slice` with `len` values of T at this aligned offset,
        // and kept alive by `chunk`.
        unsafe { std::slice::from_raw_parts(self.chunk.ptr.as_ptr().add(self.offset).cast::<T>(), self.len) }
    }
}

/// A matrix's values: on the heap while it is being built, then in huge pages.
pub enum Storage<T> {
    Heap(Vec<T>),
    Huge(HugeSlice<T>),
}

impl<T: Copy> Storage<T> {
    pub fn into_huge_pages(self) -> Self {
        match self {
            Self::Heap(v) => Self::Huge(HugeSlice::from_slice(&v)),
            huge => huge,
        }
    }
}

impl<T> std::ops::Deref for Storage<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Self::Heap(v) => v,
            Self::Huge(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_keep_their_values_across_chunks() {
        let small: Vec<HugeSlice<f32>> = (0..100).map(|i| HugeSlice::from_slice(&vec![i as f32; 1000 + i])).collect();
        // Bigger than a chunk: a chunk of its own.
        let big = HugeSlice::from_slice(&vec![7u8; CHUNK + 3]);
        let after = HugeSlice::from_slice(&[1u8, 2, 3]);
        for (i, s) in small.iter().enumerate() {
            assert_eq!(s.len(), 1000 + i);
            assert!(s.iter().all(|&v| v == i as f32));
            assert_eq!(s.as_ptr() as usize % ALIGN, 0);
        }
        assert!(big.len() == CHUNK + 3 && big.iter().all(|&v| v == 7));
        assert_eq!(&after[..], &[1, 2, 3]);
        let empty = HugeSlice::<u8>::from_slice(&[]);
        assert!(empty.is_empty());
    }
}
