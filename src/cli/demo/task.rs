//! The demo's task: a number written in digits (x) → the same number in English words (y), e.g.
//! "4821: " → "four thousand eight hundred twenty-one". Conditioning is everything here: y is a
//! deterministic function of x, so a model that ignored x could not do better than guessing.
//! Every x occurs once, so splitting by x is splitting by number.
use condlm::rng::mix;

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// Largest number of the task (0..=MAX_NUMBER).
pub const MAX_NUMBER: u32 = 9999;

/// `n` (0..=9999) in American English words: "zero", "forty-two", "one thousand five", "nine
/// thousand nine hundred ninety-nine" (no "and").
pub fn number_to_words(n: u32) -> String {
    assert!(n <= MAX_NUMBER, "number_to_words covers 0..={MAX_NUMBER}, got {n}");
    if n == 0 {
        return ONES[0].to_string();
    }
    let mut parts: Vec<String> = vec![];
    let (thousands, hundreds, rest) = (n / 1000, n / 100 % 10, n % 100);
    if thousands > 0 {
        parts.push(format!("{} thousand", ONES[thousands as usize]));
    }
    if hundreds > 0 {
        parts.push(format!("{} hundred", ONES[hundreds as usize]));
    }
    if rest > 0 {
        parts.push(match rest {
            r if r < 20 => ONES[r as usize].to_string(),
            r if r % 10 == 0 => TENS[(r / 10) as usize].to_string(),
            r => format!("{}-{}", TENS[(r / 10) as usize], ONES[(r % 10) as usize]),
        });
    }
    parts.join(" ")
}

/// One (x, y) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub number: u32,
    pub prompt: String,
    pub completion: String,
}

impl Pair {
    pub fn of(number: u32) -> Self {
        Pair { number, prompt: format!("{number}: "), completion: number_to_words(number) }
    }

    /// The JSONL row `condlm train` reads.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"prompt": self.prompt, "completion": self.completion})
    }
}

/// The task split by x: `heldout` numbers chosen by a hash of (seed, number) — deterministic and
/// disjoint from `train` — and the rest (at most `train` of them, also chosen by the hash) for training.
pub fn split(seed: u64, heldout: usize, train: usize) -> (Vec<Pair>, Vec<Pair>) {
    let mut numbers: Vec<u32> = (0..=MAX_NUMBER).collect();
    numbers.sort_unstable_by_key(|&n| (mix(mix(seed ^ 0xD3E0) ^ n as u64), n));
    let heldout = heldout.min(numbers.len());
    let (held, rest) = numbers.split_at(heldout);
    let mut held: Vec<u32> = held.to_vec();
    let mut train_n: Vec<u32> = rest[..train.min(rest.len())].to_vec();
    held.sort_unstable();
    train_n.sort_unstable();
    (train_n.into_iter().map(Pair::of).collect(), held.into_iter().map(Pair::of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let cases = [
            (0, "zero"),
            (7, "seven"),
            (13, "thirteen"),
            (20, "twenty"),
            (42, "forty-two"),
            (100, "one hundred"),
            (105, "one hundred five"),
            (1000, "one thousand"),
            (1005, "one thousand five"),
            (1010, "one thousand ten"),
            (2300, "two thousand three hundred"),
            (4821, "four thousand eight hundred twenty-one"),
            (9999, "nine thousand nine hundred ninety-nine"),
        ];
        for (n, w) in cases {
            assert_eq!(number_to_words(n), w);
        }
    }

    #[test]
    fn split_is_disjoint_and_deterministic() {
        let (train, held) = split(7, 100, 20_000);
        assert_eq!(held.len(), 100);
        assert_eq!(train.len() + held.len(), MAX_NUMBER as usize + 1);
        let held_set: std::collections::HashSet<u32> = held.iter().map(|p| p.number).collect();
        assert!(train.iter().all(|p| !held_set.contains(&p.number)));
        assert_eq!(split(7, 100, 20_000), (train, held));
        assert_ne!(split(8, 100, 20_000).1, split(7, 100, 20_000).1);
    }
}
