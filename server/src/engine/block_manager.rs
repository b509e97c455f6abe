//! KV block accounting: a free list and reference counts. Shared blocks (the prompt of the
//! `n` choices of one request) are copied on first write.

#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    free: Vec<u32>,
    refcount: Vec<u32>,
}

/// What it takes to give a sequence room for more tokens.
#[derive(Debug, Default, PartialEq)]
pub struct AppendPlan {
    pub new_blocks: usize,
    /// The partly filled last block is shared and must be copied before writing.
    pub copy_on_write: bool,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Pop from the end: hand out low block ids first (easier to read in traces).
        Self { block_size, free: (0..num_blocks as u32).rev().collect(), refcount: vec![0; num_blocks] }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_total(&self) -> usize {
        self.refcount.len()
    }
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    pub fn usage(&self) -> f64 {
        if self.num_total() == 0 { 0.0 } else { 1.0 - self.num_free() as f64 / self.num_total() as f64 }
    }

    pub fn plan_append(&self, table: &[u32], num_cached: usize, num_new: usize) -> AppendPlan {
        let needed = (num_cached + num_new).div_ceil(self.block_size);
        let copy_on_write = num_cached % self.block_size != 0
            && table.get(num_cached / self.block_size).is_some_and(|&b| self.refcount[b as usize] > 1);
        AppendPlan { new_blocks: needed.saturating_sub(table.len()), copy_on_write }
    }

    pub fn can_append(&self, table: &[u32], num_cached: usize, num_new: usize) -> bool {
        let p = self.plan_append(table, num_cached, num_new);
        p.new_blocks + usize::from(p.copy_on_write) <= self.num_free()
    }

    /// Grows `table` for `num_new` more tokens; returns a `(src, dst)` block copy when the
    /// shared last block had to be duplicated. Callers check [`Self::can_append`] first.
    pub fn append(&mut self, table: &mut Vec<u32>, num_cached: usize, num_new: usize) -> Option<(u32, u32)> {
        let plan = self.plan_append(table, num_cached, num_new);
        assert!(plan.new_blocks + usize::from(plan.copy_on_write) <= self.num_free(), "append without room");
        let mut copy = None;
        if plan.copy_on_write {
            let idx = num_cached / self.block_size;
            let (src, dst) = (table[idx], self.take());
            self.release(src);
            table[idx] = dst;
            copy = Some((src, dst));
        }
        for _ in 0..plan.new_blocks {
            let b = self.take();
            table.push(b);
        }
        copy
    }

    /// Another owner of the same blocks (a forked sequence).
    pub fn share(&mut self, table: &[u32]) {
        for &b in table {
            self.refcount[b as usize] += 1;
        }
    }

    pub fn free_table(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..) {
            self.release(b);
        }
    }

    fn take(&mut self) -> u32 {
        let b = self.free.pop().expect("checked by can_append");
        self.refcount[b as usize] = 1;
        b
    }

    fn release(&mut self, b: u32) {
        let rc = &mut self.refcount[b as usize];
        debug_assert!(*rc > 0, "double free of block {b}");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_with_tokens_and_return_on_free() {
        let mut a = BlockAllocator::new(4, 4);
        let mut t = vec![];
        assert!(a.append(&mut t, 0, 5).is_none());
        assert_eq!(t.len(), 2);
        assert!(a.can_append(&t, 5, 3)); // fits in block 2
        assert!(a.can_append(&t, 5, 11)); // 16 tokens = 4 blocks
        assert!(!a.can_append(&t, 5, 12));
        a.free_table(&mut t);
        assert_eq!(a.num_free(), 4);
        assert_eq!(a.usage(), 0.0);
    }

    #[test]
    fn shared_partial_block_is_copied_on_write_once_per_extra_owner() {
        let mut a = BlockAllocator::new(8, 4);
        let mut parent = vec![];
        a.append(&mut parent, 0, 6); // blocks [b0 full, b1 half]
        let mut child = parent.clone();
        a.share(&child);
        assert_eq!(a.num_free(), 6);
        let copy = a.append(&mut child, 6, 1).expect("child copies the shared half block");
        assert_eq!(copy.0, parent[1]);
        assert_ne!(child[1], parent[1]);
        assert_eq!(child[0], parent[0], "full blocks stay shared");
        // The parent is now the only owner of its half block: no copy.
        assert!(a.append(&mut parent, 6, 1).is_none());
        a.free_table(&mut parent);
        assert_eq!(a.num_free(), 6, "the shared full block is still owned by the child");
        a.free_table(&mut child);
        assert_eq!(a.num_free(), 8);
    }
}
