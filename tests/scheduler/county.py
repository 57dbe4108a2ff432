"""A hand-made town whose unserved needs have known reasons."""

SCHOOLS = """school_id,name,county_id,county_name,kind
zx,城关中心校,c1,清水县,central
xh,小河教学点,c1,清水县,point
ds,大山教学点,c1,清水县,point
ly,柳林教学点,c1,清水县,point
far,远方中心校,c2,远方县,central
"""
CLASSROOMS = """classroom_id,school_id,name,role,agent_id,downlink_mbps,uplink_mbps
zx-r1,zx,录播教室1,master,agent-zx-r1,50,20
zx-r2,zx,录播教室2,master,agent-zx-r2,50,20
xh-r1,xh,小河教室,receiving,agent-xh,4,2
ds-r1,ds,大山教室,receiving,agent-ds,4,2
ly-r1,ly,柳林教室,receiving,agent-ly,1,1
far-r1,far,远方录播,master,agent-far,50,20
"""
TEACHERS = """teacher_id,school_id,name,subjects,grades,weekly_cap
t-wang,zx,王老师,English,3;4;5,6
t-li,zx,李老师,Music;Art,3;4;5,6
t-far,far,远老师,Science,4,6
"""
CLASSES = """class_id,school_id,grade,name,students,classroom_id
zx-g4,zx,4,四年级1班,45,zx-r1
zx-g3,zx,3,三年级1班,45,zx-r2
xh-g4,xh,4,grade 4,12,xh-r1
ds-g4,ds,4,grade 4,9,ds-r1
ly-g4,ly,4,grade 4,7,ly-r1
far-g4,far,4,四年级,40,far-r1
"""
# 城关 rings at 08:00, 小河 five minutes later, 大山 at 08:00; afternoon from 14:00.
BELLS = "school_id,period,start,end\n" + "".join(
    f"{s},{p},{t}\n"
    for s, shift in (("zx", 0), ("xh", 5), ("ds", 0), ("ly", 0), ("far", 0))
    for p, t in enumerate(
        [
            f"{8 + (shift + m) // 60:02d}:{(shift + m) % 60:02d},"
            f"{8 + (shift + m + 40) // 60:02d}:{(shift + m + 40) % 60:02d}"
            for m in (0, 50, 120, 170)
        ],
        start=1,
    )
)
# English grade 4 on Mon P1 and Wed P2; Music grade 4 Tue P3; Art grade 3 Thu P1.
OFFERS = """class_id,subject,teacher_id,weekday,period,stream_mbps
zx-g4,English,t-wang,1,1,2
zx-g4,English,t-wang,3,2,2
zx-g4,Music,t-li,2,3,2
zx-g3,Art,t-li,4,1,2
far-g4,Science,t-far,4,2,2
"""
# 小河 grade 4 is busy on Tuesday morning (no Music fits); 大山 takes everything.
BUSY = """class_id,weekday,period,subject
xh-g4,2,1,语文
xh-g4,2,2,数学
xh-g4,2,3,语文
xh-g4,2,4,数学
"""
NEEDS = """class_id,subject,periods_per_week
xh-g4,English,2
xh-g4,Music,1
ds-g4,English,2
ds-g4,Art,1
ly-g4,English,1
xh-g4,Science,1
"""
CALENDAR = """kind,start,end,weekday,name,timezone
term,2025-09-01,2025-10-31,,秋季学期,Asia/Shanghai
holiday,2025-10-01,2025-10-07,,国庆节,
makeup,2025-09-28,,3,调休,
"""


def files() -> dict[str, str]:
    return {
        "schools": SCHOOLS,
        "classrooms": CLASSROOMS,
        "teachers": TEACHERS,
        "classes": CLASSES,
        "bells": BELLS,
        "offers": OFFERS,
        "busy": BUSY,
        "needs": NEEDS,
        "calendar": CALENDAR,
    }
