//! Where the numbers were measured: the adapter (or the host CPU), for reports and plot titles.

use compositional_attention::GpuContext;

pub struct Machine {
    /// `GpuContext::describe`: name, backend, device type, driver.
    pub adapter: String,
    /// `vulkan`, `metal`, `dx12`, `gl`, ... (`cpu` for the CPU reference alone).
    pub backend: String,
    /// Name and backend only, for the plot's title.
    pub short: String,
    /// `COMPATTN_TUNE` as the context runs it: `off`, `on` or `force` (`off` for the CPU
    /// reference). With tuning on, the warm-up forwards of a new shape class measure its
    /// candidate tilings, and the timed forwards run the fastest.
    pub tune: &'static str,
}

impl Machine {
    pub fn of(ctx: Option<&GpuContext>) -> Machine {
        match ctx {
            Some(ctx) => {
                let info = ctx.info();
                Machine {
                    adapter: ctx.describe(),
                    backend: format!("{:?}", info.backend).to_lowercase(),
                    short: format!("{}, {:?}", info.name, info.backend),
                    tune: ctx.tune_mode().name(),
                }
            }
            None => Machine {
                adapter: "host CPU (f64 reference, one thread)".into(),
                backend: "cpu".into(),
                short: "host CPU".into(),
                tune: "off",
            },
        }
    }
}
