//! Prints the FlashSale CRD YAML: `cargo run -p flashsale-operator --bin crdgen > crds/flashsale.dev_flashsales.yaml`.

fn main() {
    print!("{}", flashsale_operator::crd::crd_yaml());
}
