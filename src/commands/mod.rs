//! What each subcommand does, as calls into the library: one small handler per file. Argument
//! definitions are in `cli.rs`; `device.rs` turns `--device` into a backend, in one place.

mod bench;
mod data;
pub mod device;
mod eval;
mod export;
mod plan;
mod synth;
mod train;
mod world;

use anyhow::Result;

use crate::cli::{Cli, Command, ExperimentCommand};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::World(a) => world::world(a),
        Command::Tokenizer(t) => data::tokenizer(t),
        Command::Prep(a) => data::prep_cmd(a),
        Command::Data(a) => data::data(a),
        Command::Train(a) => train::train(a),
        Command::Launch(a) => crate::dist::launch::launch(&crate::dist::launch::LaunchPlan {
            nproc_per_node: a.nproc_per_node,
            nnodes: a.nnodes,
            node_rank: a.node_rank,
            master: a.master,
            args: a.command,
        }),
        Command::Generate(a) => eval::generate(a),
        Command::Synth(a) => synth::synth(a),
        Command::Bench(a) => bench::bench(a),
        Command::Eval(a) => eval::eval(a),
        Command::Plan(a) => plan::plan_cmd(a),
        Command::Plot(a) => {
            let (png, svg) = crate::plot::plot(&a.runs, &a.out)?;
            eprintln!("wrote {} and {}", png.display(), svg.display());
            Ok(())
        }
        Command::Export(a) => export::export(a),
        Command::Convert(a) => export::convert(a),
        Command::Experiment(ExperimentCommand::World(a)) => world::experiment_world(a),
    }
}

/// Size rayon's global pool (0: one thread per core). Only the first call takes effect.
pub(crate) fn set_threads(n: usize) {
    if n > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
}
