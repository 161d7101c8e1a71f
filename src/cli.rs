//! The command line: clap definitions of every subcommand. What each one does lives in
//! `commands.rs`, in terms of library calls.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::prep::{InputKind, TextSplit};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Rust-native LLM pre-training for instruction pre-training",
    long_about = "kiln tokenizes, packs and trains Llama-family models on raw text mixed with \
                  instruction-augmented text (Instruction Pre-Training, Cheng et al. 2024).\n\n\
                  Start with `kiln world`: it generates the embedded synthetic world, trains its \
                  tokenizer and prepares token shards, with no download."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate the embedded synthetic world (people, biographies, question-answer pairs), train
    /// its tokenizer and prepare its token shards, as the config's [world] section says.
    World(WorldArgs),
    /// Train or use tokenizers.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Tokenize text, JSONL, augmented or fine-tuning records into kiln token shards.
    Prep(PrepArgs),
    /// Show what the mixture loader serves for a config: tokens per source, epochs, sample batches.
    Data(DataArgs),
    /// Train a model. With no arguments: the embedded default (configs/tiny.toml) on the CPU,
    /// building the synthetic world's data first if it is missing.
    Train(TrainArgs),
    /// Start one process per device on this node for data-parallel training
    /// (`kiln launch --nproc-per-node 8 -- train --config run.toml`); stops them all when one fails.
    Launch(LaunchArgs),
    /// Sample text from a checkpoint (KV cache; greedy, temperature, top-p).
    Generate(GenerateArgs),
    /// Synthesize instruction-response pairs for raw texts with an instruction synthesizer
    /// (multi-round chains, batched KV-cache generation); resumable: rerun the same command.
    Synth(SynthArgs),
    /// Time every backend operation at model shapes: GB/s or TFLOP/s against measured ceilings.
    Bench(BenchArgs),
    /// Score a checkpoint on task files (multiple choice, completion) and held-out shards.
    Eval(EvalArgs),
    /// Draw training and validation loss and task scores of one or several runs (PNG and SVG).
    Plot(PlotArgs),
    /// Print a run's memory plan per device (weights, gradients, optimizer, activations) and whether
    /// it fits, without data or weights.
    Plan(PlanArgs),
    /// Write a checkpoint as a Hugging Face model directory (config.json, safetensors, tokenizer).
    Export(ExportArgs),
    /// Load a Hugging Face Llama/Mistral directory (checking every name and shape) and write it
    /// back out, e.g. to change dtype or sharding.
    Convert(ConvertArgs),
    /// Built-in experiments.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Instruction pre-training vs vanilla pre-training on the synthetic world: train both with
    /// the same model and token budget (configs/world-vanilla.toml, configs/world-ipt.toml), ask
    /// both the held-out people's questions, print the comparison and plot the curves. Finished
    /// runs are reused and interrupted ones resumed.
    World(ExperimentWorldArgs),
}

#[derive(Args, Debug)]
pub struct ExperimentWorldArgs {
    /// Vanilla arm's config. Default: the embedded configs/world-vanilla.toml.
    #[arg(long)]
    pub vanilla: Option<PathBuf>,
    /// Instruction pre-training arm's config. Default: the embedded configs/world-ipt.toml.
    #[arg(long)]
    pub ipt: Option<PathBuf>,
    /// Override a value in both configs: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Results directory (results.json, results.md, curves.png/svg); runs go to OUT/vanilla and
    /// OUT/ipt (a study's to OUT/seedN/…). Default: runs/experiment-world, or
    /// runs/experiment-world-STUDY for a study.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Score at most this many items per task (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_items: usize,
    /// Sequences per scoring batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Where to train (evaluation runs on the CPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// `main`: vanilla against instruction pre-training. `finetune`: adds vanilla pre-training
    /// followed by instruction tuning on the training people's QA pairs, at the same total tokens.
    /// `efficiency`: all three at several token budgets, instruction pre-training at two
    /// mixtures. `ablation`: instruction pre-training without one category's pairs or one layout,
    /// scored per category. The studies run the embedded configs at study scale (a 100-person
    /// world, 300 steps); their runs go under OUT/seedN/.
    #[arg(long, value_enum, default_value = "main")]
    pub study: crate::world::experiment::Study,
    /// Seeds per arm for a study (train.seed = data.seed = 0, 1, …).
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
    /// `--study finetune` and `efficiency`: share of the token budget that vanilla + instruction
    /// tuning spends on instruction tuning.
    #[arg(long, default_value_t = 0.1)]
    pub ft_fraction: f64,
    /// `--study efficiency`: token budgets, as shares of the configs' train.steps (above 1 for
    /// longer runs).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1")]
    pub budgets: Vec<f64>,
    /// `--study efficiency`: the augmented records' shares of the instruction pre-training tokens.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.2")]
    pub ratios: Vec<f64>,
    /// `--study ablation`: the attribute categories to leave out of the augmented records, one
    /// run each (birth_date, birth_city, university, major, employer, employer_city).
    #[arg(long, value_delimiter = ',', default_value = "birth_city")]
    pub leave_out: Vec<String>,
    /// `--study ablation`: the document layouts to leave out of the augmented records, one run
    /// each (the others keep their relative weights).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "classic")]
    pub leave_out_layout: Vec<crate::data::augment::Layout>,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// The synthesizer: a Hugging Face directory (config.json, safetensors, tokenizer.json) or a
    /// kiln run/checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Raw texts: JSONL records with a text field (--field), plain, gzip (.gz), zstd (.zst) or
    /// parquet; files, directories (their files, sorted) and globs, in the order given.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// How the inputs are stored (default: by extension, .gz gzip, .zst zstd, .parquet parquet,
    /// else plain). Compressed and parquet inputs are decoded once into OUT.input.jsonl, which
    /// is removed when the run completes.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: crate::data::input::Format,
    /// The field holding the text (a dotted path reaches nested fields: meta.abstract).
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Keep only records where PATH == VALUE (or drop them: PATH != VALUE); repeatable, all must
    /// hold. E.g. --filter 'meta.pile_set_name == "PubMed Abstracts"'.
    #[arg(long)]
    pub filter: Vec<String>,
    /// Augmented records (JSONL, for `kiln prep --kind augmented`); OUT.progress.json beside it.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Synthesis rounds (chains of up to this many texts): 2 for general corpora, 3 for domain
    /// corpora (the paper).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// New tokens per text at most.
    #[arg(long, default_value_t = 400)]
    pub max_new_tokens: usize,
    /// Tokens of prompt plus generation (default 4096, or the model's limit when smaller).
    #[arg(long)]
    pub context: Option<usize>,
    /// Sequences decoded together (KV cache slots).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Most prompt tokens prefilled in one pass (at least the context).
    #[arg(long, default_value_t = 4096)]
    pub prefill_tokens: usize,
    /// 0 = greedy (the paper).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// CPU threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory (its newest checkpoint), one checkpoint directory, or a Hugging Face model
    /// directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Task files: JSONL with input, options, gold_index (multiple choice) or input, answer
    /// (completion).
    #[arg(long, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Held-out shards (a glob) for loss and perplexity.
    #[arg(long)]
    pub data: Option<String>,
    /// Batches of held-out data to score.
    #[arg(long, default_value_t = 20)]
    pub data_batches: usize,
    /// Sequence length of held-out batches (default: the run's data.seq_len; required for a
    /// Hugging Face directory).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Rows per scoring batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Longest greedy completion.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with metrics.jsonl).
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output path without extension: OUT.png and OUT.svg.
    #[arg(long, short, default_value = "plot")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The backend whose storage widths to plan for.
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: Device,
}

/// Stored dtype of exported weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDtype {
    Bf16,
    F32,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint) or one checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub to_hf: PathBuf,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: ExportDtype,
    /// Shard the weights above this size per file.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A Hugging Face model directory.
    #[arg(long)]
    pub from_hf: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub to_hf: PathBuf,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: ExportDtype,
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `ops` (default): every backend operation at a model's shapes. `attention`: attention
    /// forward and backward over sequence lengths, head dims 64/128, causal, not causal, and
    /// causal with mixed-length documents, at a fixed token count (default 16384). `generate`:
    /// batched generation with random weights (preset mistral-7b on CUDA, tiny on the CPU).
    #[arg(value_enum, default_value = "ops")]
    pub what: BenchWhat,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// `bench attention`: sequence lengths (comma-separated; default 512,1024,…,16384).
    #[arg(long, value_delimiter = ',')]
    pub seqs: Vec<usize>,
    /// `bench attention`: head dims (comma-separated; default 64,128).
    #[arg(long, value_delimiter = ',')]
    pub head_dims: Vec<usize>,
    /// `bench generate`: batch sizes (comma-separated; default 1,32,128).
    #[arg(long, value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// `bench generate`: prompt tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    pub prompt_len: usize,
    /// `bench generate`: new tokens per sequence (no stop token: every sequence runs to it).
    #[arg(long, default_value_t = 400)]
    pub new_tokens: usize,
    /// Shapes: the embedded default's model, or one Llama-3-8B layer (default: tiny on the CPU,
    /// llama3-8b on CUDA).
    #[arg(long, value_enum)]
    pub preset: Option<crate::model::presets::Preset>,
    /// Override the token count N (a multiple of the preset's sequence length).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// `bench step`: the model (default: 124m; tiny runs in seconds on a CPU).
    #[arg(long, value_enum)]
    pub model: Option<crate::bench::step::StepModel>,
    /// `bench step`: sequence length T (default 512 on the CPU, 2048 on CUDA; tiny: 256).
    #[arg(long)]
    pub seq: Option<usize>,
    /// `bench step`: the head's rows per chunk, as `train.head_chunk` (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub head_chunk: usize,
    /// Timed repetitions per operation (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    Ops,
    Attention,
    /// Generated tokens/s of the batched engine (random weights) at several batch sizes.
    Generate,
    /// The step-time model: every operation of one training step (`--model`), its measured time
    /// beside its time at the measured ceilings, and a measured whole step.
    Step,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue from the newest checkpoint in train.out_dir (`--resume`), or from a given step
    /// (`--resume 100`).
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "STEP")]
    pub resume: Option<String>,
    /// Start over in a train.out_dir that holds another run: remove its checkpoints, metrics.jsonl
    /// and config.toml first (nothing else). Without it, a fresh run there is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Stop after this step and checkpoint it (the schedule still follows train.steps); resume
    /// later with --resume. For time-boxed jobs.
    #[arg(long, value_name = "STEP")]
    pub until: Option<u64>,
    /// Where to train: the CPU reference backend, or one GPU (a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Data parallelism in one process on the CPU: train.world_size ranks as threads over an
    /// in-process communicator (tests the distributed path without GPUs).
    #[arg(long)]
    pub ranks_as_threads: bool,
}

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Processes (devices) on this node.
    #[arg(long)]
    pub nproc_per_node: usize,
    /// Nodes in the run.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index (0 is the node of rank 0).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of rank 0's rendezvous, reachable from every node (default on one node: a free
    /// local port).
    #[arg(long)]
    pub master: Option<String>,
    /// The kiln command each process runs, after `--` (e.g. `-- train --config run.toml`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A run directory (its newest checkpoint), one checkpoint directory (step_000100), or a
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prompt text (repeatable: one generation per prompt).
    #[arg(long, short, required = true)]
    pub prompt: Vec<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A config file and overrides, shared by commands that read a run config.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Run config (TOML). Default: the embedded configs/tiny.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WorldArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Regenerate even when the world's files already exist.
    #[arg(long)]
    pub force: bool,
    /// Only write the world's JSONL files; skip the tokenizer and the shards.
    #[arg(long)]
    pub no_prep: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (GPT-2 style, `<s>`/`</s>` special tokens).
    Train {
        /// Input files: JSONL (`--field`) or plain text (one sequence per line).
        #[arg(long, short, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Vocabulary size, special tokens included.
        #[arg(long)]
        vocab_size: usize,
        /// Where to write tokenizer.json.
        #[arg(long, short)]
        out: PathBuf,
        /// JSONL field holding the text.
        #[arg(long, default_value = "text")]
        field: String,
    },
    /// Print the token ids of a text (no special tokens added).
    Encode {
        #[arg(long, short)]
        tokenizer: PathBuf,
        text: String,
    },
}

#[derive(Args, Debug)]
pub struct PrepArgs {
    /// tokenizer.json to encode with.
    #[arg(long, short)]
    pub tokenizer: PathBuf,
    /// Input files, directories (every file below, in path order) and globs (quoted: 'data/*.jsonl.zst').
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory for the shards.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Shard name prefix: NAME_00000.kiln, NAME_00001.kiln, ...
    #[arg(long, default_value = "data")]
    pub name: String,
    /// How the inputs are stored (default: by extension, .gz gzip, .zst zstd, else plain).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: crate::data::input::Format,
    /// Input kind (default: by extension under any compression, .jsonl/.json → jsonl, else text).
    #[arg(long, value_enum)]
    pub kind: Option<InputKind>,
    /// JSONL field holding the text (a dotted path reaches nested fields: meta.text).
    #[arg(long, default_value = "text")]
    pub field: String,
    /// --kind instructions: the field of the instruction (dotted path; OpenOrca: question).
    #[arg(long, default_value = "question")]
    pub instruction_field: String,
    /// --kind instructions: the field of the response (dotted path; OpenOrca: response).
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// Keep only the JSON records where PATH == VALUE (or != VALUE); repeatable, all must hold.
    /// E.g. --filter 'meta.pile_set_name == "PubMed Abstracts"'.
    #[arg(long)]
    pub filter: Vec<String>,
    /// How plain-text files split into documents.
    #[arg(long, value_enum, default_value = "file")]
    pub text_split: TextSplit,
    /// Roll to a new shard at this size (e.g. 256MB, 1GB, 100000).
    #[arg(long, default_value = "256MB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Skip (and count) malformed lines instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Seed of the templating choices for augmented records.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fine-tuning documents hold at most this many tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// BOS token string (default: recognised by name).
    #[arg(long)]
    pub bos_token: Option<String>,
    /// EOS token string (default: recognised by name).
    #[arg(long)]
    pub eos_token: Option<String>,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Planned training tokens, for the epochs column (default: one pass over all sources).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Decode and print this many rows of the first batch.
    #[arg(long, default_value_t = 1)]
    pub show: usize,
    /// Time this many batches and print the loader's tokens/s.
    #[arg(long, default_value_t = 0)]
    pub time_batches: usize,
}

/// Parse sizes like `256MB`, `1GiB`, `64k`, `100000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256MB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        other => return Err(format!("{s:?}: unknown size unit {other:?}")),
    };
    let v = n * mult;
    if v < 1.0 {
        return Err(format!("{s:?}: size must be positive"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
    }
}
