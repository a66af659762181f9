//! Installing a compiled filter.

use super::SeccompError;

/// A compiled filter, ready to load.
#[derive(Debug)]
pub struct Filter(pub(super) libseccomp::ScmpFilterContext);

impl Filter {
    /// Load into the kernel for the calling thread. The thread must already have
    /// `PR_SET_NO_NEW_PRIVS` (or CAP_SYS_ADMIN). It allocates, which is fine in
    /// the forked child that calls it just before `exec`.
    pub fn load(&self) -> Result<(), SeccompError> {
        self.0
            .load()
            .map_err(|source| SeccompError::Load { source })
    }
}
