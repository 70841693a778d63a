//! CXML (Cloudonix's TwiML dialect): the documents answered calls execute.
