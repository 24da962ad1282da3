#!/usr/bin/env python3
"""Send one e-mail for `distq worker --exec`: the e-mail queue without writing Rust.

    distq worker --connect ADDR --queue mail --exec python3 examples/sendmail.py

Reads the mail as JSON on stdin ({"from","to","subject","body"}), as `distq put --jsonl` and
`cargo run --example email -- produce` store it, and sends it to the SMTP server at
$SMTP_HOST:$SMTP_PORT (default 127.0.0.1:25) with Message-ID <$DISTQ_TASK_ID@distq>, so a
mail sent twice is recognisable by its Message-ID.

Exit statuses, as the worker reads them (qmail, sysexits and Postfix use the same):
  0   the SMTP server accepted the mail
  75  temporary (EX_TEMPFAIL): a 4xx reply, a connection error or a time-out; retried later
  67  permanent (EX_NOUSER): the recipient was refused with a 5xx; dead-lettered at once
  65  permanent (EX_DATAERR): stdin is not a mail; dead-lettered at once
  100 permanent: any other 5xx reply; dead-lettered at once
"""

import json
import os
import smtplib
import socket
import sys
from email.message import EmailMessage

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, PERMANENT = 0, 65, 67, 75, 100


def fail(status, why):
    print(f"sendmail.py: {why}", file=sys.stderr)
    return status


def by_code(code, why):
    """75 for a 4xx reply, `permanent` for a 5xx one."""
    return EX_TEMPFAIL if 400 <= code < 500 else why


def main():
    task_id = os.environ.get("DISTQ_TASK_ID")
    if not task_id:
        return fail(EX_DATAERR, "DISTQ_TASK_ID is not set: run me from distq worker --exec")
    try:
        mail = json.load(sys.stdin)
        msg = EmailMessage()
        msg["From"] = mail["from"]
        msg["To"] = mail["to"]
        msg["Subject"] = mail["subject"]
        msg["Message-ID"] = f"<{task_id}@distq>"
        msg.set_content(mail["body"])
    except (ValueError, KeyError, TypeError) as e:
        return fail(EX_DATAERR, f'stdin is not a mail {{"from","to","subject","body"}}: {e!r}')

    host = os.environ.get("SMTP_HOST", "127.0.0.1")
    port = int(os.environ.get("SMTP_PORT", "25"))
    smtp = None
    try:
        smtp = smtplib.SMTP(host, port, timeout=30)
        smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        status = by_code(code, EX_NOUSER)
        return fail(status, f"recipient refused: {code} {text.decode(errors='replace')}")
    except smtplib.SMTPResponseException as e:
        status = by_code(e.smtp_code, PERMANENT)
        return fail(status, f"SMTP {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
    except (smtplib.SMTPException, OSError, socket.timeout) as e:
        return fail(EX_TEMPFAIL, f"cannot reach {host}:{port}: {e}")
    finally:
        # The mail is accepted once send_message returned: a failing QUIT must not turn
        # that into a retry (a duplicate) or a bounce.
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
