//! The bus driver: nothing to add, so it skips its location and passes the IRP on (the
//! pattern that exercises `IoSkipCurrentIrpStackLocation`).

use rehydrate_driver::Status;

use crate::irp::{IrpId, Layer};
use crate::kernel::Kernel;

const ME: Layer = Layer::Bus;

/// `IRP_MJ_*` dispatch.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    k.skip(ME, id);
    k.call(ME, id, Layer::Device)
}
