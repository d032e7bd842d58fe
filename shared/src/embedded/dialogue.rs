//! Dialogue skeletons: one profile plus the seeded RNG gives one short doctor–patient visit and
//! the clinician's one-line note.
//!
//! The code-specific wording comes only from the profile (symptoms, findings, negatives, onset);
//! everything drawn from the lists below is shared by all codes, so a model can only learn the
//! code from the clinical cues, not from the skeleton.
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use super::catalog::{Finding, Profile, SexConstraint};

/// One generated visit.
pub(crate) struct Visit {
    pub dialogue: String,
    pub note: String,
}

/// The number of skeletons; visit `i` of a code uses skeleton `i % SKELETONS` (rotated per code).
pub(crate) const SKELETONS: usize = 6;

const GREETINGS: &[&str] = &[
    "Good morning, come on in.",
    "Hi there, have a seat.",
    "Hello, nice to see you again.",
    "Good afternoon, I'm Dr. Patel.",
    "Hi, thanks for waiting.",
    "Hello, I'm Dr. Nguyen, one of the doctors here.",
    "Morning! How are you doing?",
    "Hi, I'm Dr. Romero. Thanks for coming in.",
    "Good evening, sorry for the wait.",
    "Hello again, please sit down.",
];
const OPEN_QUESTIONS: &[&str] = &[
    "What brings you in today?",
    "What can I do for you?",
    "How can I help you today?",
    "What's been going on?",
    "Tell me what's bothering you.",
];
const PATIENT_OPENERS: &[&str] = &[
    "Hi doctor.",
    "Hello, thanks for seeing me.",
    "Hi, I wasn't sure whether to come in.",
    "Morning, doctor.",
    "Thanks for fitting me in today.",
    "Hi. I've been putting this off for a while.",
];
// Every onset phrase answers "how long" ("for two days", "since last night", "about an hour ago").
const ONSET_QUESTIONS: &[&str] = &[
    "How long has this been going on?",
    "How long has it been bothering you?",
    "And how long have you had this?",
    "How long have you noticed this?",
];
const MORE_QUESTIONS: &[&str] = &[
    "Anything else?",
    "What else have you noticed?",
    "Is there anything else going on?",
    "Okay. Anything else I should know?",
];
const NEGATIVE_ASKS: &[&str] = &["Any {}?", "Have you had any {}?", "What about {}?"];
/// The questions above that also read right when a parent answers for a child.
const ONSET_QUESTIONS_PARENT: &[&str] = &[
    "How long has this been going on?",
    "How long has it been going on?",
];
const NEGATIVE_ASKS_PARENT: &[&str] = &["Any {}?", "What about {}?"];
const EXAM_INTROS_PARENT: &[&str] = &[
    "Let me take a look.",
    "Okay, let's have a look.",
    "Let me check a few things.",
];
const DENIALS: &[&str] = &[
    "No, no {}.",
    "No, nothing like that.",
    "No.",
    "Not that I've noticed.",
];
const EXAM_INTROS: &[&str] = &[
    "Let me take a look.",
    "Let me examine you.",
    "Okay, let's have a look.",
    "Let me check a few things.",
];
const PATIENT_QUESTIONS: &[&str] = &[
    "Is it anything serious?",
    "What do you think it is?",
    "Should I be worried?",
    "Do I need any tests?",
    "Will this go away on its own?",
    "What should I do?",
];
const ACKS: &[&str] = &["Okay.", "I see.", "Alright.", "Okay, that makes sense."];
const CLOSINGS: &[&str] = &[
    "Let me explain what I think is going on and what we'll do next.",
    "I have a good idea of what this is. Let's go over the plan.",
    "That fits with what I'm seeing. Here's what I suggest.",
    "Okay. I'll explain what this is and how we treat it.",
    "Thanks, that's helpful. Let's talk about treatment.",
    "Good. Let's talk about next steps.",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sex {
    Female,
    Male,
}

/// Who answers the doctor: the patient, or a parent for a young child.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaker {
    Patient,
    Parent,
}

/// Children under this age are spoken for by a parent.
const PARENT_SPEAKS_UNDER: u8 = 12;

/// The drawn facts of one visit.
struct Case<'p> {
    sex: Sex,
    age: u8,
    speaker: Speaker,
    onset: &'p str,
    symptoms: Vec<&'p str>,
    findings: Vec<Finding>,
    negative: &'p str,
}

/// The lines of a dialogue under construction.
struct Script {
    speaker: Speaker,
    lines: Vec<String>,
}

impl Script {
    fn doctor(&mut self, text: impl AsRef<str>) {
        self.say("Doctor", text.as_ref());
    }
    fn patient(&mut self, text: impl AsRef<str>) {
        let who = match self.speaker {
            Speaker::Patient => "Patient",
            Speaker::Parent => "Parent",
        };
        self.say(who, text.as_ref());
    }
    /// Appends a turn; consecutive sentences of one speaker stay one turn, as people talk.
    fn say(&mut self, who: &str, text: &str) {
        let prefix = format!("{who}: ");
        match self.lines.last_mut() {
            Some(last) if last.starts_with(&prefix) => {
                last.push(' ');
                last.push_str(text);
            }
            _ => self.lines.push(format!("{prefix}{text}")),
        }
    }
}

/// Generates one visit for `profile` along skeleton number `skeleton` (taken modulo [`SKELETONS`]).
pub(crate) fn visit(profile: &Profile, skeleton: usize, rng: &mut ChaCha8Rng) -> Visit {
    let case = draw(profile, rng);
    let mut s = Script {
        speaker: case.speaker,
        lines: Vec::new(),
    };
    let pick =
        |list: &[&'static str], rng: &mut ChaCha8Rng| *list.choose(rng).expect("non-empty list");
    let (onset_questions, exam_intros) = match case.speaker {
        Speaker::Patient => (ONSET_QUESTIONS, EXAM_INTROS),
        Speaker::Parent => (ONSET_QUESTIONS_PARENT, EXAM_INTROS_PARENT),
    };
    let sym = &case.symptoms;
    let rest = sentences(&sym[2..]);
    let onset = format!("{}.", capitalize(case.onset));
    match skeleton % SKELETONS {
        0 => {
            s.doctor(format!(
                "{} {}",
                pick(GREETINGS, rng),
                pick(OPEN_QUESTIONS, rng)
            ));
            s.patient(sentences(&sym[..2]));
            s.doctor(pick(onset_questions, rng));
            s.patient(&onset);
            s.doctor(pick(MORE_QUESTIONS, rng));
            s.patient(&rest);
            negative_exchange(&mut s, &case, rng);
            findings(&mut s, &case.findings, Some(pick(exam_intros, rng)));
            s.patient(pick(PATIENT_QUESTIONS, rng));
        }
        1 => {
            s.patient(format!("{} {}", opener(&case, rng), joined(sym[0], sym[1])));
            s.doctor(format!(
                "I'm sorry to hear that. {}",
                pick(onset_questions, rng)
            ));
            s.patient(format!("{onset} Also, {}. {}", sym[2], sentences(&sym[3..])).trim_end());
            age_exchange(&mut s, &case);
            findings(&mut s, &case.findings, None);
            negative_exchange(&mut s, &case, rng);
        }
        2 => {
            s.doctor(pick(GREETINGS, rng));
            age_exchange(&mut s, &case);
            s.doctor(pick(OPEN_QUESTIONS, rng));
            s.patient(sentences(&sym[..1]));
            s.doctor(pick(onset_questions, rng));
            s.patient(format!("{onset} {}", sentences(&sym[1..2])));
            s.doctor(pick(MORE_QUESTIONS, rng));
            s.patient(format!("{rest} And I haven't had any {}.", case.negative));
            findings(&mut s, &case.findings, Some(pick(exam_intros, rng)));
            s.patient(pick(PATIENT_QUESTIONS, rng));
        }
        3 => {
            s.doctor("Hi, can you hear me okay on the video?");
            s.patient("Yes, I can hear you fine.");
            s.doctor(pick(OPEN_QUESTIONS, rng));
            s.patient(format!("{} {rest}", joined(sym[0], sym[1])));
            s.doctor(pick(onset_questions, rng));
            s.patient(&onset);
            negative_exchange(&mut s, &case, rng);
            findings(&mut s, &case.findings, None);
            s.patient(pick(PATIENT_QUESTIONS, rng));
        }
        4 => {
            s.doctor("The nurse says you've been having some trouble. Tell me more.");
            s.patient(sentences(&sym[..2]));
            s.doctor(pick(onset_questions, rng));
            s.patient(&onset);
            negative_exchange(&mut s, &case, rng);
            s.doctor(pick(MORE_QUESTIONS, rng));
            s.patient(&rest);
            findings(&mut s, &case.findings, Some(pick(exam_intros, rng)));
            s.patient(pick(ACKS, rng));
        }
        _ => {
            s.patient(opener(&case, rng));
            s.doctor(pick(OPEN_QUESTIONS, rng));
            s.patient(format!("{} {rest}", sentences(&sym[..2])));
            s.doctor(pick(onset_questions, rng));
            s.patient(format!("{}, more or less.", capitalize(case.onset)));
            age_exchange(&mut s, &case);
            negative_exchange(&mut s, &case, rng);
            findings(&mut s, &case.findings, Some(pick(exam_intros, rng)));
        }
    }
    s.doctor(pick(CLOSINGS, rng));
    Visit {
        dialogue: s.lines.join("\n"),
        note: note(profile, &case, rng),
    }
}

fn draw<'p>(profile: &'p Profile, rng: &mut ChaCha8Rng) -> Case<'p> {
    let sex = match profile.sex {
        SexConstraint::Female => Sex::Female,
        SexConstraint::Male => Sex::Male,
        SexConstraint::Any if rng.random_bool(0.5) => Sex::Female,
        SexConstraint::Any => Sex::Male,
    };
    let age = rng.random_range(profile.ages.clone());
    let speaker = if age < PARENT_SPEAKS_UNDER {
        Speaker::Parent
    } else {
        Speaker::Patient
    };
    let mut symptoms = profile.symptoms.clone();
    symptoms.shuffle(rng);
    symptoms.truncate(if rng.random_bool(0.5) { 3 } else { 4 });
    let mut findings = profile.findings.clone();
    findings.shuffle(rng);
    findings.truncate(2);
    Case {
        sex,
        age,
        speaker,
        onset: profile
            .onset
            .choose(rng)
            .expect("profiles have onset words"),
        symptoms,
        findings,
        negative: profile
            .negatives
            .choose(rng)
            .expect("profiles have negatives"),
    }
}

fn opener(case: &Case<'_>, rng: &mut ChaCha8Rng) -> String {
    match case.speaker {
        Speaker::Patient => (*PATIENT_OPENERS.choose(rng).expect("non-empty")).to_owned(),
        Speaker::Parent => format!("Hi doctor, I brought my {} in.", child(case.sex)),
    }
}

fn age_exchange(s: &mut Script, case: &Case<'_>) {
    match case.speaker {
        Speaker::Patient => {
            s.doctor(format!("And you're {} now, is that right?", case.age));
            s.patient(format!("Yes, {}.", case.age));
        }
        Speaker::Parent => {
            s.doctor(format!("And how old is your {}?", child(case.sex)));
            s.patient(format!("{} {}.", pronoun(case.sex), case.age));
        }
    }
}

fn negative_exchange(s: &mut Script, case: &Case<'_>, rng: &mut ChaCha8Rng) {
    let asks = match case.speaker {
        Speaker::Patient => NEGATIVE_ASKS,
        Speaker::Parent => NEGATIVE_ASKS_PARENT,
    };
    let ask = asks.choose(rng).expect("non-empty");
    let deny = DENIALS.choose(rng).expect("non-empty");
    s.doctor(ask.replace("{}", case.negative));
    s.patient(deny.replace("{}", case.negative));
}

fn findings(s: &mut Script, findings: &[Finding], intro: Option<&str>) {
    let mut intro = intro;
    for f in findings {
        match *f {
            Finding::Statement(text) => match intro.take() {
                Some(i) => s.doctor(format!("{i} {text}")),
                None => s.doctor(text),
            },
            Finding::Question { ask, answer } => {
                s.doctor(ask);
                s.patient(answer);
            }
        }
    }
}

fn note(profile: &Profile, case: &Case<'_>, rng: &mut ChaCha8Rng) -> String {
    let person = match (case.sex, case.age >= 18) {
        (Sex::Female, true) => "woman",
        (Sex::Male, true) => "man",
        (Sex::Female, false) => "girl",
        (Sex::Male, false) => "boy",
    };
    let (age, cond, onset, neg) = (case.age, profile.condition, case.onset, case.negative);
    match rng.random_range(0..3) {
        0 => {
            format!("{age}-year-old {person} with symptoms {onset}; no {neg}. Assessment: {cond}.")
        }
        1 => {
            // "an 8-year-old", "an 11-year-old", "an 18-year-old", "an 80-year-old"
            let article = if age == 11 || age == 18 || age.to_string().starts_with('8') {
                "an"
            } else {
                "a"
            };
            format!(
                "Assessment: {cond} in {article} {age}-year-old {person}, symptoms {onset}, denies {neg}."
            )
        }
        _ => format!(
            "{age}-year-old {person}, symptoms {onset}; history and exam consistent with {cond}."
        ),
    }
}

fn sentences(clauses: &[&str]) -> String {
    clauses
        .iter()
        .map(|c| format!("{}.", capitalize(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn joined(a: &str, b: &str) -> String {
    format!("{}, and {b}.", capitalize(a))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn child(sex: Sex) -> &'static str {
    match sex {
        Sex::Female => "daughter",
        Sex::Male => "son",
    }
}

fn pronoun(sex: Sex) -> &'static str {
    match sex {
        Sex::Female => "She's",
        Sex::Male => "He's",
    }
}
