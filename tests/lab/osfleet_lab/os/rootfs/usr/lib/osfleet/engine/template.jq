# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# template.jq: the subset of Go's text/template that `balena ... --format` of the osfleet lab
# engine understands (jq 1.6). Usage: jq -r -L DIR --arg tpl T 'include "template"; render($tpl)'
#
#   {{.A.B}} {{.}} {{$.A}}      fields of the object (missing: <no value>), the object, the root
#   {{json .A}} {{.A | json}}   pipelines; functions json, index, len, join, split, lower, upper,
#                               eq, ne, not, and, or, print, println, printf (%s %d %v %q %%)
#   {{range .A}}..{{else}}..{{end}}   {{if X}}..{{else}}..{{end}}   {{with X}}..{{end}}
#   {{- ... -}} trims the white space around an action; {{/* comments */}}
# Values print like Go's fmt %v: maps as map[k:v ...], lists as [a b ...], null as <no value>.

def _ws_l: sub("^[ \t\r\n]+"; "");
def _ws_r: sub("[ \t\r\n]+$"; "");

def _tokens:
  . as $s
  | [ $s | splits("\\{\\{") ] as $parts
  | [ {t: "text", v: $parts[0]} ]
    + [ $parts[1:][]
        | (index("}}") // error("template: unclosed action")) as $i
        | .[0:$i] as $a
        | ({t: "act", v: $a, l: ($a | startswith("- ")), r: ($a | endswith(" -"))},
           {t: "text", v: .[$i + 2:]}) ];

def _trimmed:
  . as $t
  | [ range(0; $t | length) as $i
      | $t[$i]
      | if .t == "text" then
          (if $i > 0 and $t[$i - 1].r then .v |= _ws_l else . end)
          | (if $i + 1 < ($t | length) and $t[$i + 1].l then .v |= _ws_r else . end)
        else .v |= (if startswith("- ") then .[2:] else . end
                    | if endswith(" -") then .[:-2] else . end | _ws_l | _ws_r)
        end ];

def _parse($t):
  def block($start):
    def go($st):
      if $st.i >= ($t | length) then $st + {stop: "eof"}
      else $t[$st.i] as $k
        | if $k.t == "text" then go($st | .nodes += [$k] | .i += 1)
          elif $k.v == "end" or $k.v == "else" then $st + {stop: $k.v, i: ($st.i + 1)}
          elif ($k.v | startswith("/*")) then go($st | .i += 1)
          elif ($k.v | test("^(range|if|with) ")) then
            ($k.v | capture("^(?<kw>range|if|with) (?<e>.*)$")) as $c
            | block($st.i + 1) as $body
            | (if $body.stop == "else" then block($body.i)
               elif $body.stop == "end" then {nodes: [], i: $body.i, stop: "end"}
               else error("template: missing {{end}}") end) as $alt
            | if $alt.stop != "end" then error("template: missing {{end}}")
              else go($st | .nodes += [{t: $c.kw, e: $c.e, body: $body.nodes, alt: $alt.nodes}]
                          | .i = $alt.i) end
          else go($st | .nodes += [{t: "expr", e: $k.v}] | .i += 1)
          end
      end;
    go({nodes: [], i: $start});
  block(0) | if .stop != "eof" then error("template: unexpected {{\(.stop)}}") else .nodes end;

def _gofmt:
  if type == "string" then .
  elif type == "null" then "<no value>"
  elif type == "boolean" or type == "number" then tostring
  elif type == "array" then "[" + (map(_gofmt) | join(" ")) + "]"
  else "map[" + (to_entries | sort_by(.key) | map("\(.key):\(.value | _gofmt)") | join(" ")) + "]"
  end;

def _truthy: . != null and . != false and . != 0 and . != "" and . != [] and . != {};

def _field($path):
  reduce ($path | split(".")[] | select(. != "")) as $k
    (.; if type == "object" then .[$k] else null end);

def _term($w; $dot; $root):
  if $w == "." then $dot
  elif ($w | startswith(".")) then $dot | _field($w)
  elif $w == "$" then $root
  elif ($w | startswith("$.")) then $root | _field($w[1:])
  elif ($w | startswith("\"")) then $w | fromjson
  elif ($w | startswith("`")) then $w[1:-1]
  elif $w == "true" then true
  elif $w == "false" then false
  elif $w == "nil" then null
  elif ($w | test("^-?[0-9]+(\\.[0-9]+)?$")) then $w | tonumber
  else error("template: unsupported term \($w)") end;

def _printf($fmt; $vals):
  reduce ($fmt | [match("%[sdvq%]|[^%]+|%"; "g").string][]) as $p ({out: "", i: 0};
    if $p == "%%" then .out += "%"
    elif ($p | test("^%[sdvq]$")) then
      $vals[.i] as $v | .out += (if $p == "%q" then ($v | tojson) else ($v | _gofmt) end) | .i += 1
    else .out += $p end)
  | .out;

def _call($fn; $a):
  if $fn == "json" then $a[0] | tojson
  elif $fn == "index" then
    reduce $a[1:][] as $k ($a[0];
      if type == "object" then .[$k | tostring] elif type == "array" then .[$k] else null end)
  elif $fn == "len" then $a[0] | length
  elif $fn == "join" then $a[0] | map(_gofmt) | join($a[1])
  elif $fn == "split" then $a[0] | split($a[1])
  elif $fn == "lower" then $a[0] | ascii_downcase
  elif $fn == "upper" then $a[0] | ascii_upcase
  elif $fn == "eq" then $a[0] as $x | any($a[1:][]; . == $x)
  elif $fn == "ne" then $a[0] != $a[1]
  elif $fn == "not" then $a[0] | _truthy | not
  elif $fn == "and" then (first($a[] | select(_truthy | not)) // $a[-1])
  elif $fn == "or" then (first($a[] | select(_truthy)) // $a[-1])
  elif $fn == "print" then $a | map(_gofmt) | join("")
  elif $fn == "println" then ($a | map(_gofmt) | join(" ")) + "\n"
  elif $fn == "printf" then _printf($a[0]; $a[1:])
  else error("template: function \"\($fn)\" not defined") end;

def _command($w; $dot; $root; $piped):
  if ($w | length) == 0 then error("template: empty command")
  elif ($w[0] | test("^[A-Za-z_][A-Za-z0-9_]*$")) and (["true", "false", "nil"] | index([$w[0]]) | not)
  then _call($w[0]; [$w[1:][] | _term(.; $dot; $root)] + $piped)
  elif ($w | length) == 1 and ($piped | length) == 0 then _term($w[0]; $dot; $root)
  else error("template: can't give argument to non-function \($w[0])") end;

def _eval($e; $dot; $root):
  [ $e | match("\"(?:[^\"\\\\]|\\\\.)*\"|`[^`]*`|\\||[^\\s|]+"; "g").string ] as $w
  | [ foreach ($w + ["|"])[] as $x ({cur: [], out: null};
        if $x == "|" then {cur: [], out: .cur} else {cur: (.cur + [$x]), out: null} end;
        select(.out != null) | .out) ] as $cmds
  | reduce $cmds[1:][] as $c (_command($cmds[0]; $dot; $root; []);
      . as $v | _command($c; $dot; $root; [$v]));

def _render($nodes; $dot; $root):
  [ $nodes[]
    | if .t == "text" then .v
      elif .t == "expr" then _eval(.e; $dot; $root) | _gofmt
      elif .t == "if" then
        if (_eval(.e; $dot; $root) | _truthy) then _render(.body; $dot; $root)
        else _render(.alt; $dot; $root) end
      elif .t == "with" then
        _eval(.e; $dot; $root) as $v
        | if ($v | _truthy) then _render(.body; $v; $root) else _render(.alt; $dot; $root) end
      elif .t == "range" then
        _eval(.e; $dot; $root) as $v
        | (if ($v | type) == "array" then $v
           elif ($v | type) == "object" then [$v | to_entries | sort_by(.key)[] | .value]
           elif $v == null then []
           else error("template: range can't iterate over \($v)") end) as $items
        | . as $node
        | if ($items | length) == 0 then _render($node.alt; $dot; $root)
          else [$items[] as $it | _render($node.body; $it; $root)] | join("") end
      else "" end ]
  | join("");

def render($tpl): . as $root | _render(($tpl | _tokens | _trimmed) as $t | _parse($t); $root; $root);
