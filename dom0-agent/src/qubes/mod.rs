//! Qubes settings (DESIGN §11): read from dom0's own `qubes.xml`
//! (`xml`), planned into qubes to create (`plan`, pure), and created
//! through Qubes' own tools (`tools`). The records themselves and their
//! checks are `sealed::qubes`; they travel in the sealed root.

pub mod plan;
pub mod tools;
pub mod xml;
