//! `sparsify-onnx list-passes`: names, descriptions, effects and options of every pass.

use crate::Outcome;
use anyhow::Result;

pub fn main() -> Result<Outcome> {
    let reg = sparsify_onnx::registry();
    for p in reg.passes() {
        println!("{}  [{}]", p.name, p.effects.names().join(", "));
        println!("    {}", p.description);
        for o in p.options {
            let default = if o.default.is_empty() { "\"\"" } else { o.default };
            println!("    {:<12} = {:<18} {}", o.name, default, o.help);
        }
        println!();
    }
    if reg.passes().is_empty() {
        println!("(no passes registered)");
    }
    Ok(Outcome::Ok)
}
