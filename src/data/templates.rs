//! The wording pools that turn raw texts and their instruction–response pairs into natural
//! pre-training documents: text wrappers, question lead-ins, inversion wrappers, dialog headers and
//! speakers, numbered-question and inline few-shot frames, next-turn-dialog frames, option blocks,
//! unanswerable phrases, and the few-shot Q/A patterns per pair type. This file is data only; the
//! choices and the rendering live in `augment.rs`. All wording is kiln's own.
//!
//! Placeholders (filled in a single pass, so text inside a filled value is never re-expanded):
//! `{context}` the raw text, `{qa_demos}` rendered pairs, `{question}`, `{options}`, `{answer}`,
//! `{cot}` / `{explanation}` a rationale, `{questions}` / `{answers}` numbered lists, `{dialog}` and
//! `{next}` a conversation and its next turn, `{i}` a 1-based index. Every template that takes the
//! raw text contains `{context}` exactly once (a test in `augment.rs` checks it), which is what keeps
//! the raw text verbatim in every document.

/// One few-shot pattern: a pair renders as
/// `inputs_prefix + inputs + x_y_delimiter + targets_prefix + targets`, and rendered pairs are
/// joined by `example_separator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FewShotPattern {
    pub inputs_prefix: &'static str,
    /// Contains `{question}`; multiple-choice patterns also `{options}`.
    pub inputs: &'static str,
    pub x_y_delimiter: &'static str,
    pub targets_prefix: &'static str,
    /// `{answer}`, or for chain-of-thought patterns `{cot}` and `{answer}`.
    pub targets: &'static str,
    pub example_separator: &'static str,
}

const fn pat(
    inputs_prefix: &'static str,
    inputs: &'static str,
    x_y_delimiter: &'static str,
    targets_prefix: &'static str,
    targets: &'static str,
    example_separator: &'static str,
) -> FewShotPattern {
    FewShotPattern {
        inputs_prefix,
        inputs,
        x_y_delimiter,
        targets_prefix,
        targets,
        example_separator,
    }
}

/// Labels of the two speakers in a dialog; each starts a new turn (hence the leading newline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerPair {
    pub asker: &'static str,
    pub answerer: &'static str,
}

const fn sp(asker: &'static str, answerer: &'static str) -> SpeakerPair {
    SpeakerPair { asker, answerer }
}

/// Index labels for numbered questions and their answers; `{i}` is the 1-based index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberLabels {
    pub question: &'static str,
    pub answer: &'static str,
}

const fn nl(question: &'static str, answer: &'static str) -> NumberLabels {
    NumberLabels { question, answer }
}

/// A NatInst-style frame: `head` (task definition with `{context}`), then the earlier pairs as
/// `example`s (each followed by `explanation` when it has a rationale) joined by
/// `example_separator`, then the last pair as `new_input` (also followed by `explanation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineFewShotTemplate {
    pub head: &'static str,
    /// `{question}` and `{answer}`.
    pub example: &'static str,
    /// `{explanation}`; empty in the pool used when no pair has a rationale.
    pub explanation: &'static str,
    pub example_separator: &'static str,
    /// `{question}` and `{answer}`.
    pub new_input: &'static str,
}

const fn ifs(
    head: &'static str,
    example: &'static str,
    explanation: &'static str,
    example_separator: &'static str,
    new_input: &'static str,
) -> InlineFewShotTemplate {
    InlineFewShotTemplate {
        head,
        example,
        explanation,
        example_separator,
        new_input,
    }
}

/// Which symbols label the options. `Bullet` repeats one mark, so its labels are not unique and a
/// multiple-choice target stays the option text; every other series gives unique labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelSeries {
    Bullet,
    UpperLetter,
    LowerLetter,
    Arabic,
    LowerRoman,
    UpperRoman,
}

/// One option item renders as `before + label + after + option text`, where `label` is this
/// style's `label` with `{}` replaced by the series symbol (a bullet's label is used as written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionItemStyle {
    pub before: &'static str,
    pub series: LabelSeries,
    pub label: &'static str,
    pub after: &'static str,
}

const fn oi(
    before: &'static str,
    series: LabelSeries,
    label: &'static str,
    after: &'static str,
) -> OptionItemStyle {
    OptionItemStyle {
        before,
        series,
        label,
        after,
    }
}

// ---------------------------------------------------------------------------------------------
// Classic layout: text wrapper, whitespace, question lead-in.

/// Wrappers around the raw text; about half leave it bare.
pub const READ_START: &[&str] = &[
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "Passage: {context}",
    "Read the following text and answer the questions after it.\n{context}",
    "Text:\n{context}",
    "Here is a piece of writing:\n\n{context}",
    "Source document:\n{context}",
    "Study this excerpt carefully.\n\n{context}",
    "Background reading: {context}",
    "Consider the passage below.\n{context}",
    "Excerpt: \"{context}\"",
    "Reference material:\n{context}",
    "Go through this text first:\n{context}",
    "Document:\n\n{context}",
    "Here's something to read before the questions:\n{context}",
    "Given the text: {context}",
    "Use the information in this passage to respond.\n\n{context}",
    "Context:\n{context}",
    "The following is an extract.\n{context}",
    "Take a look at this text.\n{context}",
    "Reading:\n{context}",
    "Keep this passage in mind: {context}",
];

/// Whitespace between the wrapped text and a non-empty lead-in.
pub const READ_END: &[&str] = &[" ", "\n", "\n\n"];

/// Lead-ins before the questions; about half are empty (then `READ_END` is dropped too).
pub const COMPRE_START: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "Answer the questions below.",
    "Now respond to these questions:",
    "Questions about the passage:",
    "Check your understanding with the following questions.",
    "Based on the text above, answer the following.",
    "Quiz time! Try these questions:",
    "Let's see how much you remember. Answer these:",
    "Use the passage to answer the following:",
    "Here are some questions on what you just read.",
    "Test yourself on the text:",
    "Reading check:",
    "Comprehension questions follow.",
    "Please answer each question using the passage.",
    "Respond to the prompts that follow, drawing on the text.",
    "What did you learn? Answer the questions below.",
    "A few questions about this text:",
    "Try answering these based on the article:",
    "Time to test your reading. Questions:",
    "Work through the following questions.",
    "Questions and answers based on the passage above:",
    "Below are questions related to the text; an answer follows each one.",
    "Your task: answer the questions about the reading.",
    "Think about the passage and answer:",
    "Follow-up questions:",
    "Q&A about the text:",
    "Discussion questions:",
    "Let's check comprehension.",
    "Answer using details from the text:",
    "Here are some exercises on the passage:",
    "Practice questions:",
];

// ---------------------------------------------------------------------------------------------
// Inversion: the pairs come first, then the text.

/// Wrappers around the rendered pairs when they precede the text; about half leave them bare.
pub const QA_START: &[&str] = &[
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "{qa_demos}",
    "Below are some questions and answers. Write a passage they could have come from.\n{qa_demos}",
    "Questions and answers:\n{qa_demos}",
    "Study these Q&A pairs, then read the text that explains them.\n\n{qa_demos}",
    "Here are a few questions with their answers:\n{qa_demos}",
    "Write an article that answers the following questions.\n{qa_demos}",
    "Given these question-answer pairs, produce a matching text.\n\n{qa_demos}",
    "Facts in Q&A form:\n{qa_demos}",
    "Use the following questions and answers as an outline for a passage:\n{qa_demos}",
    "FAQ:\n{qa_demos}",
    "Some questions, answered:\n{qa_demos}",
    "These questions are answered by the text that follows.\n{qa_demos}",
    "Quiz answers first:\n{qa_demos}",
    "Compose a document consistent with these answers.\n\n{qa_demos}",
    "Notes in question-and-answer form:\n{qa_demos}",
    "Q&A:\n{qa_demos}",
];

/// Whitespace between the pairs and the text when inverted.
pub const QA_END: &[&str] = &["\n", "\n\n", "\n\n\n", " ", "\n\n", "\n", "\n\n", "\n"];

/// Wrappers around the raw text when it follows the pairs; about half leave it bare.
pub const TEXT_START: &[&str] = &[
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "{context}",
    "Passage: {context}",
    "Article:\n{context}",
    "Here is a text that covers those answers:\n{context}",
    "Now the passage: {context}",
    "Written out as an article:\n{context}",
    "The source text:\n\n{context}",
    "Text: {context}",
    "Here is the full document.\n{context}",
    "A passage built around these facts:\n{context}",
    "Related article:\n{context}",
    "Full text:\n{context}",
    "Read on for the details.\n\n{context}",
    "Background:\n{context}",
    "The document these answers come from:\n{context}",
    "Expanded version:\n{context}",
];

// ---------------------------------------------------------------------------------------------
// Dialog layouts.

/// What separates the text from a dialog.
pub const DIALOG_BREAK: &[&str] = &["\n\n", "\n", " ", " | "];

/// Headers introducing a dialog (may be empty).
pub const DIALOG_HEADER: &[&str] = &[
    "",
    "",
    "",
    "Conversation:",
    "Dialogue:",
    "A chat about the text:",
    "Two people discuss the passage.",
    "Transcript:",
    "Here is a conversation about what was written above.",
    "Discussion:",
    "Chat log:",
    "Exchange:",
    "Talking it over:",
    "Q&A session:",
    "Interview:",
    "The following dialogue refers to the text.",
    "Conversation based on the passage:",
    "Two readers talk about it:",
    "Questions asked in conversation:",
    "A short dialogue:",
    "Chat transcript:",
    "Dialog:",
    "Here's how the conversation went:",
    "Recorded conversation:",
    "Message thread:",
    "Study-group discussion:",
    "Classroom exchange:",
    "Let's discuss the text.",
    "Speaker log:",
    "A back-and-forth about the text:",
    "Help-desk chat:",
    "Conversation transcript:",
];

/// Speaker labels: the asker voices the question, the answerer the answer.
pub const SPEAKERS: &[SpeakerPair] = &[
    sp("\nPerson 1: ", "\nPerson 2: "),
    sp("\nA: ", "\nB: "),
    sp("\nUser: ", "\nAssistant: "),
    sp("\nStudent: ", "\nTeacher: "),
    sp("\nSpeaker 1: ", "\nSpeaker 2: "),
    sp("\nP1: ", "\nP2: "),
    sp("\n[Asker] ", "\n[Answerer] "),
    sp("\nReader: ", "\nGuide: "),
    sp("\nInterviewer: ", "\nGuest: "),
    sp("\nCustomer: ", "\nAgent: "),
    sp("\nLearner: ", "\nTutor: "),
    sp("\n- ", "\n- "),
    sp("\nX: ", "\nY: "),
    sp("\nHuman: ", "\nAI: "),
    sp("\nAsker: ", "\nResponder: "),
    sp("\nSam: ", "\nAlex: "),
    sp("\nMia: ", "\nLeo: "),
    sp("\nFriend A: ", "\nFriend B: "),
    sp("\nParticipant 1: ", "\nParticipant 2: "),
    sp("\nCurious: ", "\nExpert: "),
    sp("\n(1) ", "\n(2) "),
    sp("\nU: ", "\nS: "),
    sp("\nInquirer: ", "\nSpecialist: "),
    sp("\nMe: ", "\nYou: "),
    sp("\nJordan: ", "\nTaylor: "),
    sp("\nVisitor: ", "\nLibrarian: "),
    sp("\n#1: ", "\n#2: "),
    sp("\nQuestioner: ", "\nAnswerer: "),
    sp("\nNovice: ", "\nMentor: "),
    sp("\nCaller: ", "\nHost: "),
];

/// Next-turn frames: `{context}`, `{dialog}` (every turn up to the last question) and `{next}`
/// (the last answer).
pub const NEXT_TURN: &[&str] = &[
    "{context}\n\nRead the conversation about the text and write the next turn.{dialog}\n\nNext turn: {next}",
    "{context}\n\nPredict what the second speaker says next.{dialog}\nPrediction: {next}",
    "Background: {context}\n\nDialogue so far:{dialog}\n\nWhat comes next? {next}",
    "{context}\nContinue this chat:{dialog}\nReply: {next}",
    "{context}\n\nGiven the exchange below, write the next response.{dialog}\n\nResponse: {next}",
    "Use the passage to continue the dialogue.\n{context}\n{dialog}\n\nNext: {next}",
    "{context}\n\nComplete the conversation.{dialog}\n\nCompletion: {next}",
    "{context}\n\nA conversation is in progress:{dialog}\nHow should the other person reply?\n{next}",
    "Passage: {context}\n\nChat history:{dialog}\n\nWrite the following message.\n{next}",
    "{context}\n\nFill in the next line of this dialog.{dialog}\nNext line: {next}",
    "{context}\n\nHere is part of a discussion about the text.{dialog}\n\nThe next turn is: {next}",
    "Context: {context}\nConversation:{dialog}\nAnswer the last message: {next}",
    "{context}\n\nRespond as the second speaker.{dialog}\n\n{next}",
    "{context}\n\nWhat would be a good next turn in this exchange?{dialog}\n\nSuggested turn: {next}",
    "Read the text, then the conversation, and give the next reply.\n\n{context}\n{dialog}\n\nReply: {next}",
];

// ---------------------------------------------------------------------------------------------
// Numbered questions.

/// Frames with `{context}`, `{questions}` and `{answers}` (numbered lists, one item a line).
pub const NUMBERED: &[&str] = &[
    "{context}\n\nAnswer each question.\n{questions}\n\nAnswers:\n{answers}",
    "Text: {context}\nQuestions:\n{questions}\nAnswers:\n{answers}",
    "{context}\n\n{questions}\n\nSolutions:\n{answers}",
    "Read this.\n{context}\n\nNow answer:\n{questions}\n---\n{answers}",
    "Problem set based on the passage below.\n\n{context}\n\n{questions}\n\nAnswer key:\n{answers}",
    "{context}\nQuestions about the text:\n{questions}\nAnswer key:\n{answers}",
    "Passage:\n{context}\n\nExercises:\n{questions}\n\nWorked answers:\n{answers}",
    "{context}\n\nHere are several questions; the answers are listed afterwards.\n{questions}\n\n{answers}",
    "Material: {context}\n\nTasks:\n{questions}\n\nResponses:\n{answers}",
    "{context}\n\nQuiz\n{questions}\n\nQuiz answers\n{answers}",
    "Source: {context}\n{questions}\nAnswers in order:\n{answers}",
    "{context}\n\nQuestions\n=========\n{questions}\n\nAnswers\n=======\n{answers}",
    "Study the text and answer the numbered questions.\n\n{context}\n\n{questions}\n\nAnswers:\n{answers}",
    "{context}\n\nQ:\n{questions}\n\nA:\n{answers}",
    "Given the article below, respond to each question.\nArticle: {context}\n{questions}\nReplies:\n{answers}",
];

/// Index labels for the numbered lists.
pub const NUMBER_LABELS: &[NumberLabels] = &[
    nl("{i}. ", "{i}. "),
    nl("{i}) ", "{i}) "),
    nl("[{i}] ", "[{i}] "),
    nl("({i}) ", "({i}) "),
    nl("Q{i}: ", "A{i}: "),
    nl("Question {i}: ", "Answer {i}: "),
    nl("#{i} ", "#{i} "),
    nl("{i}: ", "{i}: "),
    nl("Q{i}. ", "A{i}. "),
    nl("{i} - ", "{i} - "),
    nl("Item {i}: ", "Item {i}: "),
    nl("<{i}> ", "<{i}> "),
];

// ---------------------------------------------------------------------------------------------
// Inline few-shot (NatInst-style task definition, examples, new input).

/// Frames used when no pair of the document carries a rationale.
#[rustfmt::skip]
pub const INLINE_FEW_SHOT: &[InlineFewShotTemplate] = &[
    ifs("In this task you get a passage and questions about it. A few solved examples come first; answer the new question the same way.\n\nPassage: {context}\n\n",
        "Example question: {question}\nExample answer: {answer}", "", "\n\n",
        "\n\nNew question: {question}\nAnswer: {answer}"),
    ifs("Task definition: read the context and answer questions about it.\nContext: {context}\n\nExamples:\n",
        "Input: {question}\nOutput: {answer}", "", "\n\n",
        "\n\nNow solve this instance.\nInput: {question}\nOutput: {answer}"),
    ifs("{context}\n\nInstructions: use the text above and follow the pattern shown in the examples.\n\n",
        "Q: {question}\nA: {answer}", "", "\n",
        "\n\nYour turn.\nQ: {question}\nA: {answer}"),
    ifs("You will read a document, then see worked examples of a task, then a new case to handle.\n\nDocument:\n{context}\n\n",
        "Case: {question}\nHandled as: {answer}", "", "\n\n",
        "\n\nNew case: {question}\nHandled as: {answer}"),
    ifs("Detailed instructions: answer questions using only the given text.\n\n{context}\n\nHere are some demonstrations.\n",
        "Question: {question}\nAnswer: {answer}", "", "\n\n",
        "\n\nQuestion to solve: {question}\nAnswer: {answer}"),
    ifs("Read the passage, study the examples, then answer the final question.\n{context}\n\n",
        "Sample input: {question}\nSample output: {answer}", "", "\n",
        "\n\nTest input: {question}\nTest output: {answer}"),
    ifs("Context for the task:\n{context}\n\nSolved examples:\n",
        "- {question} => {answer}", "", "\n",
        "\n\nUnsolved: {question}\nSolution: {answer}"),
    ifs("Goal: answer reading questions about a text. First the text, then examples, then the problem.\n\nText: {context}\n\n",
        "Example -- {question}\nResponse -- {answer}", "", "\n\n",
        "\n\nProblem -- {question}\nResponse -- {answer}"),
    ifs("{context}\n\nTeacher: here are some questions about this passage with their answers.\n",
        "Question: {question}\nAnswer: {answer}", "", "\n",
        "\n\nTeacher: now you try. {question}\nStudent: {answer}"),
    ifs("Given a text and a question, produce the answer. Follow the examples.\n\nText:\n{context}\n\n",
        "Example input: {question}\nExample output: {answer}", "", "\n\n",
        "\n\nInput: {question}\nOutput: {answer}"),
    ifs("Instructions: the passage below is followed by example question-answer pairs. Answer the last question in the same style.\n\n{context}\n\n",
        "[Q] {question}\n[A] {answer}", "", "\n\n",
        "\n\n[Q] {question}\n[A] {answer}"),
    ifs("Reading task.\nPassage: {context}\n\nDemonstrations:\n",
        "{question} -> {answer}", "", "\n",
        "\n\nNow answer: {question} -> {answer}"),
];

/// Frames used when some pair of the document carries a rationale: each shot that has one is
/// followed by its `explanation`.
#[rustfmt::skip]
pub const INLINE_FEW_SHOT_EXPLAINED: &[InlineFewShotTemplate] = &[
    ifs("In this task you get a passage and questions about it. Each solved example comes with a short explanation. Answer the new question the same way.\n\nPassage: {context}\n\n",
        "Example question: {question}\nExample answer: {answer}", "\nExplanation: {explanation}", "\n\n",
        "\n\nNew question: {question}\nAnswer: {answer}"),
    ifs("Task definition: read the context, answer each question and justify the answer.\nContext: {context}\n\nExamples:\n",
        "Input: {question}\nOutput: {answer}", "\nJustification: {explanation}", "\n\n",
        "\n\nNow solve this instance.\nInput: {question}\nOutput: {answer}"),
    ifs("{context}\n\nInstructions: use the text above. The examples show an answer and the reasoning behind it.\n\n",
        "Q: {question}\nA: {answer}", "\nReasoning: {explanation}", "\n\n",
        "\n\nYour turn.\nQ: {question}\nA: {answer}"),
    ifs("You will read a document, then worked examples with their rationale, then a new case.\n\nDocument:\n{context}\n\n",
        "Case: {question}\nHandled as: {answer}", "\nRationale: {explanation}", "\n\n",
        "\n\nNew case: {question}\nHandled as: {answer}"),
    ifs("Detailed instructions: answer questions using the given text and explain why.\n\n{context}\n\nDemonstrations:\n",
        "Question: {question}\nAnswer: {answer}", "\nWhy: {explanation}", "\n\n",
        "\n\nQuestion to solve: {question}\nAnswer: {answer}"),
    ifs("Read the passage and study the explained examples before answering the final question.\n{context}\n\n",
        "Sample input: {question}\nSample output: {answer}", "\nBecause: {explanation}", "\n\n",
        "\n\nTest input: {question}\nTest output: {answer}"),
    ifs("Context for the task:\n{context}\n\nSolved examples with working:\n",
        "Problem: {question}\nSolution: {answer}", "\nWorking: {explanation}", "\n\n",
        "\n\nUnsolved: {question}\nSolution: {answer}"),
    ifs("Goal: answer reading questions about a text and say how you got there.\n\nText: {context}\n\n",
        "Example -- {question}\nResponse -- {answer}", "\nHow -- {explanation}", "\n\n",
        "\n\nProblem -- {question}\nResponse -- {answer}"),
    ifs("{context}\n\nTeacher: here are questions about this passage, each with an answer and an explanation.\n",
        "Question: {question}\nAnswer: {answer}", "\nExplanation: {explanation}", "\n\n",
        "\n\nTeacher: now you try. {question}\nStudent: {answer}"),
    ifs("Given a text and a question, produce the answer and a brief explanation. Follow the examples.\n\nText:\n{context}\n\n",
        "Example input: {question}\nExample output: {answer}", "\nExample explanation: {explanation}", "\n\n",
        "\n\nInput: {question}\nOutput: {answer}"),
    ifs("Instructions: the passage below is followed by answered and explained questions. Handle the last question in the same style.\n\n{context}\n\n",
        "[Q] {question}\n[A] {answer}", "\n[Why] {explanation}", "\n\n",
        "\n\n[Q] {question}\n[A] {answer}"),
    ifs("Reading task with reasons.\nPassage: {context}\n\nDemonstrations:\n",
        "{question} -> {answer}", "\n(reason: {explanation})", "\n",
        "\n\nNow answer: {question} -> {answer}"),
];

// ---------------------------------------------------------------------------------------------
// Multiple-choice option blocks.

/// Text that opens an option block (its own leading whitespace included; may be empty).
pub const OPTION_START: &[&str] = &[
    "",
    "",
    "",
    "\nOptions:",
    "\nChoices:",
    "\nPick one:",
    "\nSelect from the following.",
    " Choose one:",
    "\nPossible answers:",
    "\nCandidates:",
    "\nAvailable options:",
    "\nWhich of these?",
    " Options:",
    "\nAnswer choices:",
    "\nSelect the best option:",
    "\nThe choices are:",
    "\n\nOptions:",
    "\nOne of the following is correct:",
    "\nChoose the right answer:",
    "\nAlternatives:",
];

/// How each option item is labelled.
pub const OPTION_ITEM: &[OptionItemStyle] = &[
    oi("\n", LabelSeries::Bullet, "-", " "),
    oi("\n", LabelSeries::Bullet, "*", " "),
    oi("\n", LabelSeries::Bullet, "+", " "),
    oi("\n", LabelSeries::Bullet, "•", " "),
    oi("\n", LabelSeries::Bullet, "[-]", " "),
    oi("\n", LabelSeries::Bullet, "--", " "),
    oi("\n", LabelSeries::Bullet, "[+]", " "),
    oi("\n", LabelSeries::Bullet, "~", " "),
    oi(" ", LabelSeries::Bullet, "-", " "),
    oi("\n", LabelSeries::Bullet, "", ""),
    oi(" ", LabelSeries::Bullet, "|", " "),
    oi("\n", LabelSeries::UpperLetter, "{}.", " "),
    oi("\n", LabelSeries::UpperLetter, "{})", " "),
    oi("\n", LabelSeries::UpperLetter, "({})", " "),
    oi("\n", LabelSeries::UpperLetter, "[{}]", " "),
    oi(" ", LabelSeries::UpperLetter, "{}.", " "),
    oi(" ", LabelSeries::UpperLetter, "({})", " "),
    oi(" ", LabelSeries::UpperLetter, "[{}]", " "),
    oi("\n", LabelSeries::LowerLetter, "({})", " "),
    oi("\n", LabelSeries::LowerLetter, "{}.", " "),
    oi("\n", LabelSeries::LowerLetter, "{})", " "),
    oi(" ", LabelSeries::LowerLetter, "({})", " "),
    oi("\n", LabelSeries::LowerLetter, "({}).", " "),
    oi("\n", LabelSeries::Arabic, "{}.", " "),
    oi("\n", LabelSeries::Arabic, "{})", " "),
    oi("\n", LabelSeries::Arabic, "({})", " "),
    oi("\n", LabelSeries::Arabic, "[{}]", " "),
    oi(" ", LabelSeries::Arabic, "{}.", " "),
    oi(" ", LabelSeries::Arabic, "({})", " "),
    oi("\n", LabelSeries::LowerRoman, "{}.", " "),
    oi("\n", LabelSeries::LowerRoman, "({})", " "),
    oi(" ", LabelSeries::LowerRoman, "({})", " "),
    oi("\n", LabelSeries::LowerRoman, "{})", " "),
    oi("\n", LabelSeries::UpperRoman, "{}.", " "),
    oi("\n", LabelSeries::UpperRoman, "({})", " "),
];

/// What ends every option item but the last.
pub const OPTION_ITEM_END: &[&str] = &["", "", "", ";"];

/// Option text offered when the answer is "unanswerable" and no option says so.
pub const UNANSWERABLE_OPTION: &[&str] = &[
    "None of the above",
    "It cannot be determined from the text",
    "Not enough information",
    "The passage does not say",
    "Unknown",
    "No answer is given",
    "Cannot be answered",
    "There is no way to tell",
    "None of these choices",
    "Insufficient information",
    "The text does not specify",
    "Impossible to know from the passage",
    "Not stated",
    "The answer is not in the text",
    "Can't be determined",
    "Not mentioned",
    "None of the options",
    "Information not provided",
    "Unclear from the text",
    "No correct answer listed",
    "The article doesn't say",
    "There's not enough context",
    "Undetermined",
    "Not answerable",
    "The passage gives no answer",
    "No way to know",
    "Not covered in the text",
    "Cannot say",
    "Not specified",
    "None of the given answers",
];

/// Answers (compared lower-cased, trimmed, without a final period) that mean "no option is
/// right"; besides these, every `UNANSWERABLE_OPTION` phrase is recognised too.
pub const UNANSWERABLE_ANSWER: &[&str] = &[
    "unanswerable",
    "not answerable",
    "cannot be answered",
    "can't be answered",
    "none of the above",
    "none of the above choices",
    "none of the choices",
    "none of these",
    "not enough information",
    "not enough info",
    "insufficient information",
    "cannot be determined",
    "can't be determined",
    "it cannot be determined",
    "it is not possible to tell",
    "it's not possible to tell",
    "it is impossible to say",
    "impossible to tell",
    "no answer",
    "unknown",
    "not mentioned",
    "not stated",
    "the text does not say",
    "the passage does not say",
];

// ---------------------------------------------------------------------------------------------
// Few-shot patterns per pair type.

/// Plain question → answer.
#[rustfmt::skip]
pub const PLAIN_PATTERNS: &[FewShotPattern] = &[
    pat("", "Q: {question}", "\n", "A: ", "{answer}", "\n\n"),
    pat("", "Question: {question}", "\n", "Answer: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "", "{answer}", "\n\n"),
    pat("", "[Q] {question}", "\n", "[A] ", "{answer}", "\n\n"),
    pat("Problem: ", "{question}", "\n", "Solution: ", "{answer}", "\n\n"),
    pat("", "{question}", " ", "", "{answer}", "\n"),
    pat("Input: ", "{question}", "\n", "Output: ", "{answer}", "\n\n"),
    pat("", "Q. {question}", "\n", "A. ", "{answer}", "\n"),
    pat("", "Question -- {question}", "\n", "Answer -- ", "{answer}", "\n\n"),
    pat("", "{question}", "\n\n", "", "{answer}", "\n\n\n"),
    pat("", "Ask: {question}", "\n", "Reply: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "Response: ", "{answer}", "\n\n"),
    pat("", "Query: {question}", "\n", "Result: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n---\n", "", "{answer}", "\n\n"),
    pat("", "Please answer: {question}", "\n", "", "{answer}", "\n\n"),
    pat("", "Answer the question. {question}", "\n", "The answer is: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "=> ", "{answer}", "\n"),
    pat("", "Question: {question}", " ", "Answer: ", "{answer}", "\n"),
    pat("", "Q -> {question}", "\n", "A -> ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "My answer: ", "{answer}", "\n\n"),
    pat("", "Try this one: {question}", "\n", "", "{answer}", "\n\n\n"),
    pat("", "Prompt: {question}", "\n", "Completion: ", "{answer}", "\n\n"),
    pat("", "*{question}*", "\n", "", "{answer}", "\n\n"),
    pat("", "Question:\n{question}", "\n\n", "Answer:\n", "{answer}", "\n\n\n"),
    pat("", "Here is a question: {question}", "\n", "Here is the answer: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "Ans: ", "{answer}", "\n"),
    pat("", "Q: {question}", " ", "A: ", "{answer}", "\n\n"),
    pat("", "Instruction: {question}", "\n", "Response: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "-- ", "{answer}", "\n\n"),
    pat("", "Quick question: {question}", "\n", "", "{answer}", "\n\n"),
    pat("", "Task: {question}", "\n", "Solution: ", "{answer}", "\n\n\n"),
    pat("", "[Question] {question}", "\n", "[Answer] ", "{answer}", "\n\n"),
    pat("", "Can you answer this? {question}", "\n", "Sure: ", "{answer}", "\n\n"),
    pat("", "{question}", "\n", "Correct answer: ", "{answer}", "\n\n"),
];

/// Multiple choice: `{options}` is the rendered option block, `{answer}` a label or option text.
#[rustfmt::skip]
pub const MC_PATTERNS: &[FewShotPattern] = &[
    pat("", "Q: {question}{options}", "\n", "A: ", "{answer}", "\n\n"),
    pat("", "Question: {question}{options}", "\n", "Answer: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "The correct choice is ", "{answer}", "\n\n"),
    pat("Multiple choice: ", "{question}{options}", "\n", "Answer: ", "{answer}", "\n\n"),
    pat("", "Pick the right option. {question}{options}", "\n", "", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n\n", "Selected: ", "{answer}", "\n\n\n"),
    pat("", "Choose the best answer.\n{question}{options}", "\n", "Best answer: ", "{answer}", "\n\n"),
    pat("", "[Q] {question}{options}", "\n", "[A] ", "{answer}", "\n\n"),
    pat("Problem: ", "{question}{options}", "\n", "Solution: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n---\n", "", "{answer}", "\n\n"),
    pat("", "Question: {question}{options}", " ", "Answer: ", "{answer}", "\n"),
    pat("", "Which option is correct? {question}{options}", "\n", "", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "=> ", "{answer}", "\n"),
    pat("", "Select one. {question}{options}", "\n", "My pick: ", "{answer}", "\n\n"),
    pat("", "Q. {question}{options}", "\n", "A. ", "{answer}", "\n"),
    pat("Quiz: ", "{question}{options}", "\n", "Key: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Answer: ", "{answer}", "\n\n\n"),
    pat("", "Input: {question}{options}", "\n", "Output: ", "{answer}", "\n\n"),
    pat("", "Answer the following multiple-choice question.\n{question}{options}", "\n", "Answer: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Response: ", "{answer}", "\n\n"),
    pat("", "Question:\n{question}{options}", "\n\n", "Answer:\n", "{answer}", "\n\n\n"),
    pat("", "{question}{options}", " ", "", "{answer}", "\n"),
    pat("", "Test question: {question}{options}", "\n", "Correct option: ", "{answer}", "\n\n"),
    pat("", "Here is a question with choices. {question}{options}", "\n", "The answer: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Ans: ", "{answer}", "\n"),
    pat("", "Task: {question}{options}", "\n", "Solution: ", "{answer}", "\n\n"),
    pat("", "Q -> {question}{options}", "\n", "A -> ", "{answer}", "\n\n"),
    pat("", "Decide: {question}{options}", "\n", "Decision: ", "{answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "I would choose ", "{answer}", "\n\n"),
    pat("", "Exam item: {question}{options}", "\n", "Marked answer: ", "{answer}", "\n\n"),
    pat("", "[Question] {question}{options}", "\n", "[Answer] ", "{answer}", "\n\n"),
];

/// Chain of thought: `{cot}` is the rationale, `{answer}` the final answer.
#[rustfmt::skip]
pub const COT_PATTERNS: &[FewShotPattern] = &[
    pat("", "Q: {question}", "\n", "A: ", "{cot}\nSo the answer is {answer}", "\n\n"),
    pat("", "Question: {question}", "\n", "Reasoning: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "{question}", "\n", "Let me work through it. ", "{cot}\nFinal answer: {answer}", "\n\n"),
    pat("", "{question}", "\n", "", "{cot}\nSo: {answer}", "\n\n"),
    pat("Problem: ", "{question}", "\n", "Solution: ", "{cot}\nThe result is {answer}", "\n\n"),
    pat("", "{question}", "\n", "Step-by-step: ", "{cot}\nConclusion: {answer}", "\n\n"),
    pat("", "[Q] {question}", "\n", "[A] ", "{cot}\nHence {answer}", "\n\n"),
    pat("", "{question}", "\n", "Answer: ", "{answer}\nWhy: {cot}", "\n\n"),
    pat("", "Question: {question}", "\n", "Answer: ", "{answer}\nExplanation: {cot}", "\n\n"),
    pat("", "{question}\nExplain your reasoning.", "\n", "", "{cot}\nIn short: {answer}", "\n\n"),
    pat("", "Think it through: {question}", "\n", "Thoughts: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "{question}", "\n\n", "Rationale: ", "{cot}\n\nAnswer: {answer}", "\n\n\n"),
    pat("", "Input: {question}", "\n", "Output: ", "{cot}\nSo the output is {answer}", "\n\n"),
    pat("", "Q. {question}", "\n", "A. ", "{cot} The answer: {answer}", "\n"),
    pat("", "{question}", "\n", "Chain of reasoning: ", "{cot}\nResult: {answer}", "\n\n"),
    pat("", "Reason carefully. {question}", "\n", "", "{cot}\nMy answer is {answer}", "\n\n"),
    pat("", "Question:\n{question}", "\n\n", "Worked solution:\n", "{cot}\nFinal: {answer}", "\n\n\n"),
    pat("", "{question}", "\n", "=> ", "{cot}\n=> {answer}", "\n"),
    pat("", "Puzzle: {question}", "\n", "Working: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "{question}", "\n", "Short answer: ", "{answer}\nLonger explanation: {cot}", "\n\n"),
    pat("", "Task: {question}", "\n", "Solution: ", "{cot}\nHence the answer: {answer}", "\n\n"),
    pat("", "{question} Show your work.", "\n", "Work: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "Q -> {question}", "\n", "Reasoning -> ", "{cot}\nA -> {answer}", "\n\n"),
    pat("", "{question}", "\n", "Here is my thinking. ", "{cot}\nSo I would say {answer}", "\n\n"),
    pat("", "Consider this: {question}", "\n", "", "{cot}\nThe answer, then, is {answer}", "\n\n"),
    pat("", "[Question] {question}", "\n", "[Reasoning] ", "{cot}\n[Answer] {answer}", "\n\n"),
    pat("", "{question}", "\n", "Justification: ", "{cot}\nVerdict: {answer}", "\n\n"),
    pat("", "Question: {question}", " ", "Let's reason. ", "{cot} In the end: {answer}", "\n"),
    pat("", "Work out the answer: {question}", "\n", "", "{cot}\nDone: {answer}", "\n\n"),
    pat("", "{question}", "\n", "Answer and reasoning: ", "{answer}\nReasoning: {cot}", "\n\n"),
    pat("", "Explain, then answer. {question}", "\n", "Explanation: ", "{cot}\nAnswer: {answer}", "\n\n\n"),
    pat("", "Problem:\n{question}", "\n", "Thinking:\n", "{cot}\nAnswer:\n{answer}", "\n\n"),
];

/// Multiple choice with chain of thought.
#[rustfmt::skip]
pub const MC_COT_PATTERNS: &[FewShotPattern] = &[
    pat("", "Q: {question}{options}", "\n", "A: ", "{cot}\nSo the answer is {answer}", "\n\n"),
    pat("", "Question: {question}{options}", "\n", "Reasoning: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Let me reason about the options. ", "{cot}\nChosen option: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "", "{cot}\nSo: {answer}", "\n\n"),
    pat("Problem: ", "{question}{options}", "\n", "Solution: ", "{cot}\nCorrect choice: {answer}", "\n\n"),
    pat("", "Pick the right option and explain. {question}{options}", "\n", "", "{cot}\nPick: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Answer: ", "{answer}\nWhy: {cot}", "\n\n"),
    pat("", "Question: {question}{options}", "\n", "Answer: ", "{answer}\nExplanation: {cot}", "\n\n"),
    pat("", "[Q] {question}{options}", "\n", "[A] ", "{cot}\nHence {answer}", "\n\n"),
    pat("", "Think it through: {question}{options}", "\n", "Thoughts: ", "{cot}\nAnswer: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n\n", "Rationale: ", "{cot}\n\nAnswer: {answer}", "\n\n\n"),
    pat("", "Input: {question}{options}", "\n", "Output: ", "{cot}\nSo the output is {answer}", "\n\n"),
    pat("", "Q. {question}{options}", "\n", "A. ", "{cot} The answer: {answer}", "\n"),
    pat("", "Multiple choice with reasoning.\n{question}{options}", "\n", "Reasoning: ", "{cot}\nOption: {answer}", "\n\n"),
    pat("", "Question:\n{question}{options}", "\n\n", "Worked solution:\n", "{cot}\nFinal choice: {answer}", "\n\n\n"),
    pat("", "{question}{options}", "\n", "=> ", "{cot}\n=> {answer}", "\n"),
    pat("", "Eliminate the wrong options: {question}{options}", "\n", "", "{cot}\nRemaining answer: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Short answer: ", "{answer}\nLonger explanation: {cot}", "\n\n"),
    pat("", "Task: {question}{options}", "\n", "Solution: ", "{cot}\nHence the answer: {answer}", "\n\n"),
    pat("", "Q -> {question}{options}", "\n", "Reasoning -> ", "{cot}\nA -> {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Here is my thinking. ", "{cot}\nSo I would choose {answer}", "\n\n"),
    pat("", "Consider the question and the choices. {question}{options}", "\n", "", "{cot}\nThe answer, then, is {answer}", "\n\n"),
    pat("", "[Question] {question}{options}", "\n", "[Reasoning] ", "{cot}\n[Answer] {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Justification: ", "{cot}\nVerdict: {answer}", "\n\n"),
    pat("", "Question: {question}{options}", " ", "Let's reason. ", "{cot} In the end: {answer}", "\n"),
    pat("", "Choose and justify: {question}{options}", "\n", "", "{cot}\nChoice: {answer}", "\n\n"),
    pat("", "{question}{options}", "\n", "Answer with reasoning: ", "{answer}\nReasoning: {cot}", "\n\n"),
    pat("", "Explain, then select. {question}{options}", "\n", "Explanation: ", "{cot}\nSelection: {answer}", "\n\n\n"),
    pat("", "Problem:\n{question}{options}", "\n", "Thinking:\n", "{cot}\nAnswer:\n{answer}", "\n\n"),
    pat("Exam: ", "{question}{options}", "\n", "Marking scheme: ", "{cot}\nCorrect: {answer}", "\n\n"),
    pat("", "Test question: {question}{options}", "\n", "Analysis: ", "{cot}\nCorrect option: {answer}", "\n\n"),
];
